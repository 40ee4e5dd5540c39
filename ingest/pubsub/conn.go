package pubsub

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// dialTimeout bounds the TCP connect and the AMQP (and TLS) handshake.
const dialTimeout = 10 * time.Second

// URLError is a URL ValidateURL refuses; Err says why without echoing the
// URL (it may carry a password), so that a caller naming the setting can
// show Err alone.
type URLError struct{ Err error }

func (e *URLError) Error() string { return "mq: URL: " + e.Err.Error() }

func (e *URLError) Unwrap() error { return e.Err }

// ValidateURL checks that u is an amqp:// or amqps:// URL, without
// echoing it (it may carry a password). A URL given but refused is a
// *URLError.
func ValidateURL(u string) error {
	if u == "" {
		return errors.New("mq: URL is required")
	}
	uri, err := amqp.ParseURI(u)
	if err != nil {
		// ParseURI's errors do not include the URL.
		return &URLError{Err: err}
	}
	if uri.Host == "" {
		return &URLError{Err: errors.New("no host")}
	}
	return nil
}

// DeclareExchange declares the lifecycle exchange as contract §1 has it:
// topic, durable.
func DeclareExchange(ch *amqp.Channel, exchange string) error {
	if err := ch.ExchangeDeclare(exchange, "topic", true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %q: %w", exchange, err)
	}
	return nil
}

// Dial connects to url, naming the connection so operators (and tests)
// can find it in `rabbitmqctl list_connections`. amqps:// gets TLS from
// amqp091 (server name from the URL, certificates from its query).
func Dial(ctx context.Context, url, name string) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(name)
	cfg := amqp.Config{
		Properties: props,
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: dialTimeout}
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// No heartbeats yet: bound the handshake (amqp091 clears it).
			if err := conn.SetDeadline(time.Now().Add(dialTimeout)); err != nil {
				_ = conn.Close()
				return nil, err
			}
			return conn, nil
		},
	}
	conn, err := amqp.DialConfig(url, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to rabbitmq: %w", err)
	}
	return conn, nil
}
