package attune

import "context"

// DefaultExchange is the lifecycle exchange Attune's API publishes to
// (contract §1). The sensor documents name "attune", which a real Attune
// never publishes to: a node left on it would learn rule changes only from
// its reconcile. "attune" still works when configured.
const DefaultExchange = "attune.events"

// LifecycleRoutingKeys are the routing keys a node's queue is bound to.
var LifecycleRoutingKeys = []string{"rule.created", "rule.enabled", "rule.disabled", "rule.deleted"}

// QueueName is the durable queue of one node: "sensor.{sensor_ref}.{node_name}".
func QueueName(sensorRef, nodeName string) string {
	return "sensor." + sensorRef + "." + nodeName
}

// Message is one lifecycle message as RabbitMQ (or the in-process bus of
// dev mode) carries it: a routing key and a body, the envelope of
// EnvelopeJSON or the flat form ParseLifecycle also reads.
type Message struct {
	RoutingKey string
	Body       []byte
}

// Publisher sends lifecycle messages: the API's side of the wire. The
// RabbitMQ publisher and the in-process bus (package pubsub) implement it.
type Publisher interface {
	Publish(ctx context.Context, m Message) error
}
