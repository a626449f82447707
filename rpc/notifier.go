package rpc

import (
	"context"
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Notification priorities, as oslo names them.
const (
	PriorityAudit    = "AUDIT"
	PriorityDebug    = "DEBUG"
	PriorityInfo     = "INFO"
	PriorityWarn     = "WARN"
	PriorityError    = "ERROR"
	PriorityCritical = "CRITICAL"
	PrioritySample   = "SAMPLE"
)

// NotifierConfig configures a Notifier.
type NotifierConfig struct {
	// Exchange is the control exchange notifications are published to.
	Exchange string
	// PublisherID is e.g. "compute.host1" or "nova-compute:host1".
	PublisherID string
	// Topics are the notification topics ("notifications",
	// "versioned_notifications"); each notification goes to every one.
	Topics []string
	// Legacy selects oslo's "messaging" (v1) driver: the inner message is
	// sent without the 2.0 envelope. The default is "messagingv2".
	Legacy bool
}

// Notifier publishes notifications as oslo's messagingv2 (or messaging)
// driver does: to <topic>.<priority> on the control exchange, declaring that
// queue first so a listener started later still finds what was sent.
type Notifier struct {
	t   *Transport
	cfg NotifierConfig
}

// NewNotifier returns a notifier on t.
func (t *Transport) NewNotifier(cfg NotifierConfig) *Notifier {
	return &Notifier{t: t, cfg: cfg}
}

// notification is the inner message, in oslo's key order.
type notification struct {
	MessageID   string `json:"message_id"`
	PublisherID string `json:"publisher_id"`
	EventType   string `json:"event_type"`
	Priority    string `json:"priority"`
	Payload     any    `json:"payload"`
	Timestamp   string `json:"timestamp"`
	UniqueID    string `json:"_unique_id"`
}

// Notify publishes one notification with the given priority (PriorityInfo…)
// to every topic. The context keeps only the keys oslo's notifier keeps
// (no auth_token).
func (n *Notifier) Notify(ctx context.Context, rc Context, priority, eventType string, payload any) error {
	priority = strings.ToUpper(priority)
	if priority == "WARNING" {
		priority = PriorityWarn
	}
	msg := notification{
		MessageID:   uuidDashed(),
		PublisherID: n.cfg.PublisherID,
		EventType:   eventType,
		Priority:    priority,
		Payload:     payload,
		Timestamp:   time.Now().UTC().Format("2006-01-02 15:04:05.000000"),
		UniqueID:    uuidHex(),
	}
	inner, err := marshalInner(msg)
	if err != nil {
		return fmt.Errorf("encode notification %s: %w", eventType, err)
	}
	inner = appendContext(inner, rc.forNotification())
	body := inner
	if !n.cfg.Legacy {
		body = encodeEnvelope(inner)
	}
	o := n.t.opts
	ex := o.topicExchange(n.cfg.Exchange)
	for _, topic := range n.cfg.Topics {
		key := topic + "." + strings.ToLower(priority)
		q := o.topicQueue(key)
		err := n.t.pub.publish(ctx, outgoing{
			kind:       PublishNotification,
			exchange:   ex.Name,
			routingKey: key,
			msg:        publishing(body),
			declareKey: "notify:" + ex.Name + "/" + key,
			declare: func(ch *amqp.Channel) error {
				if err := declareExchange(ch, ex); err != nil {
					return err
				}
				if err := declareQueue(ch, q); err != nil {
					return err
				}
				return ch.QueueBind(q.Name, key, ex.Name, false, nil)
			},
		})
		if err != nil {
			return fmt.Errorf("notify %s to %s: %w", eventType, key, err)
		}
	}
	return nil
}
