// Package pubsub carries rule lifecycle messages (attune.Message) from the API
// to the nodes.
//
// AMQPPublisher is the API's side on RabbitMQ: persistent messages, each
// confirmed by the broker. Sends are ordered and the confirms pipelined
// (Send, then Confirm.Wait): the API sends a commit's messages under its
// write lock and awaits their confirms after it, in one broker round. Bus is the in-process stand-in `timerd dev` uses
// in place of RabbitMQ, between the API's publisher and the node's intake.
// Both implement attune.Publisher. The node's side, the consumer of its
// durable queue, is ingest.Consumer; it shares this package's connection
// plumbing (ValidateURL, Dial, DeclareExchange), so both sides check, name
// and declare alike.
package pubsub
