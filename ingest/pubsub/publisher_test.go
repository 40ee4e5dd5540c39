package pubsub

import (
	"strings"
	"testing"
	"time"
)

func TestPublisherConfigValidate(t *testing.T) {
	ok := PublisherConfig{URL: "amqp://guest:guest@127.0.0.1:5672/"}
	tests := []struct {
		name   string
		mutate func(*PublisherConfig)
		field  string
	}{
		{"defaults", func(*PublisherConfig) {}, ""},
		{"missing URL", func(c *PublisherConfig) { c.URL = "" }, "URL"},
		{"bad scheme", func(c *PublisherConfig) { c.URL = "tcp://127.0.0.1:5672" }, "URL"},
		{"long exchange", func(c *PublisherConfig) { c.Exchange = strings.Repeat("x", 256) }, "Exchange"},
		{"negative confirm timeout", func(c *PublisherConfig) { c.ConfirmTimeout = -1 }, "ConfirmTimeout"},
		{"negative reconnect", func(c *PublisherConfig) { c.ReconnectMin = -1 }, "ReconnectMin"},
		{"max below min", func(c *PublisherConfig) { c.ReconnectMin, c.ReconnectMax = time.Minute, time.Second }, "ReconnectMax"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.mutate(&cfg)
			err := cfg.Validate()
			p, nerr := NewPublisher(cfg)
			if p != nil {
				defer p.Close()
			}
			if tc.field == "" {
				if err != nil || nerr != nil {
					t.Fatalf("Validate() = %v, NewPublisher() = %v; want nil, nil", err, nerr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("Validate() = %v, want an error naming %s", err, tc.field)
			}
			if nerr == nil {
				t.Errorf("NewPublisher() = nil error, want one naming %s", tc.field)
			}
		})
	}
}
