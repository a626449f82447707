package rpc

import (
	amqp "github.com/rabbitmq/amqp091-go"
)

// The declarations below reproduce impl_rabbit.py's Consumer and publisher
// declarations flag for flag and argument for argument: the broker compares
// re-declarations exactly and closes the channel with 406 on any difference,
// so a Go service next to Python ones must declare what they declare.

// exchangeDecl is one exchange.declare.
type exchangeDecl struct {
	Name       string
	Kind       string
	Durable    bool
	AutoDelete bool
}

// queueDecl is one queue.declare.
type queueDecl struct {
	Name       string
	Durable    bool
	AutoDelete bool
	Args       amqp.Table
}

// topicExchange is the control exchange of a service ("nova", "openstack", …).
func (o Options) topicExchange(name string) exchangeDecl {
	return exchangeDecl{Name: name, Kind: amqp.ExchangeTopic, Durable: o.durable(), AutoDelete: o.AutoDelete}
}

// fanoutExchange is "<topic>_fanout", always transient and auto-deleted.
func (o Options) fanoutExchange(topic string) exchangeDecl {
	return exchangeDecl{Name: topic + "_fanout", Kind: amqp.ExchangeFanout, AutoDelete: true}
}

// topicQueue is the queue of a topic consumer ("compute", "compute.host1")
// and of a notification topic ("versioned_notifications.info").
func (o Options) topicQueue(name string) queueDecl {
	return queueDecl{Name: name, Durable: o.durable(), AutoDelete: o.AutoDelete, Args: o.queueArgs(0)}
}

// transientQueue is a fanout or reply queue: never durable, never quorum,
// expiring after rabbit_transient_queues_ttl without consumers.
func (o Options) transientQueue(name string) queueDecl {
	return queueDecl{Name: name, Args: o.queueArgsClassic(o.TransientQueuesTTL.Milliseconds())}
}

// queueArgs is _get_queue_arguments for topic and notification queues.
func (o Options) queueArgs(ttlMillis int64) amqp.Table {
	args := o.queueArgsClassic(ttlMillis)
	if o.QuorumQueue {
		args["x-queue-type"] = "quorum"
		if o.QuorumDeliveryLimit > 0 {
			args["x-delivery-limit"] = int32(o.QuorumDeliveryLimit)
		}
		if o.QuorumMaxMemoryLength > 0 {
			args["x-max-in-memory-length"] = int32(o.QuorumMaxMemoryLength)
		}
		if o.QuorumMaxMemoryBytes > 0 {
			args["x-max-in-memory-bytes"] = int32(o.QuorumMaxMemoryBytes)
		}
	}
	return args
}

// queueArgsClassic is _get_queue_arguments without the quorum settings,
// which oslo 14 never applies to transient queues.
func (o Options) queueArgsClassic(ttlMillis int64) amqp.Table {
	args := amqp.Table{}
	if o.HAQueues {
		args["x-ha-policy"] = "all"
	}
	if ttlMillis > 0 {
		args["x-expires"] = int32(ttlMillis)
	}
	return args
}

func declareExchange(ch *amqp.Channel, e exchangeDecl) error {
	return ch.ExchangeDeclare(e.Name, e.Kind, e.Durable, e.AutoDelete, false, false, nil)
}

func declareQueue(ch *amqp.Channel, q queueDecl) error {
	_, err := ch.QueueDeclare(q.Name, q.Durable, q.AutoDelete, false, false, q.Args)
	return err
}
