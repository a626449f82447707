package rpc

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"
)

// Options are oslo.messaging's rabbit driver options ([oslo_messaging_rabbit]
// and the few [DEFAULT] ones the wire depends on). They change what the
// broker sees, so they must equal the options of every Python service on the
// same broker: a queue or exchange declared with other flags makes the
// broker answer 406 PRECONDITION_FAILED.
type Options struct {
	// DurableQueues is amqp_durable_queues: topic exchanges and queues durable.
	DurableQueues bool
	// AutoDelete is amqp_auto_delete: topic exchanges and queues auto-delete.
	AutoDelete bool
	// HAQueues is rabbit_ha_queues: x-ha-policy=all on every queue.
	HAQueues bool
	// QuorumQueue is rabbit_quorum_queue: topic and notification queues are
	// quorum queues (and durable).
	QuorumQueue bool
	// QuorumDeliveryLimit, QuorumMaxMemoryLength and QuorumMaxMemoryBytes are
	// rabbit_quorum_delivery_limit and rabbit_quroum_max_memory_length/bytes
	// (oslo 14 spells them with that typo); 0 leaves the argument out.
	QuorumDeliveryLimit   int
	QuorumMaxMemoryLength int
	QuorumMaxMemoryBytes  int
	// TransientQueuesTTL is rabbit_transient_queues_ttl: x-expires of the
	// reply and fanout queues.
	TransientQueuesTTL time.Duration
	// PrefetchCount is rabbit_qos_prefetch_count; 0 sends no basic.qos.
	PrefetchCount int
	// HeartbeatTimeout is heartbeat_timeout_threshold, the AMQP heartbeat.
	HeartbeatTimeout time.Duration
	// ReconnectDelay is kombu_reconnect_delay, the first wait after a drop.
	ReconnectDelay time.Duration
	// RetryInterval, RetryBackoff and IntervalMax shape the reconnect
	// backoff (rabbit_retry_interval, rabbit_retry_backoff, rabbit_interval_max).
	RetryInterval time.Duration
	RetryBackoff  time.Duration
	IntervalMax   time.Duration
	// MissingConsumerRetryTimeout is kombu_missing_consumer_retry_timeout:
	// how long a reply to a missing reply queue is retried.
	MissingConsumerRetryTimeout time.Duration
	// UseSSL is rabbit_use_ssl (or amqps:// / ?ssl=1 in the URL).
	UseSSL bool
	// SSLCAFile, SSLCertFile and SSLKeyFile are ssl_ca_file, ssl_cert_file, ssl_key_file.
	SSLCAFile   string
	SSLCertFile string
	SSLKeyFile  string
	// SSLInsecure skips server certificate verification (not an oslo option;
	// for test brokers only).
	SSLInsecure bool
	// ResponseTimeout is rpc_response_timeout, the default call timeout.
	ResponseTimeout time.Duration
	// ExecutorPoolSize is executor_thread_pool_size: the most requests one
	// server handles at once.
	ExecutorPoolSize int
}

// DefaultOptions returns oslo.messaging 14.x's defaults.
func DefaultOptions() Options {
	return Options{
		TransientQueuesTTL:          1800 * time.Second,
		HeartbeatTimeout:            60 * time.Second,
		ReconnectDelay:              time.Second,
		RetryInterval:               time.Second,
		RetryBackoff:                2 * time.Second,
		IntervalMax:                 30 * time.Second,
		MissingConsumerRetryTimeout: 60 * time.Second,
		ResponseTimeout:             60 * time.Second,
		ExecutorPoolSize:            64,
	}
}

// ErrInvalidOption is returned (wrapped) for an option with a bad value.
var ErrInvalidOption = errors.New("invalid option")

// Set sets one option by its oslo name, as given in a transport URL's query
// string or an [oslo_messaging_rabbit] section. Unknown names return
// ok=false and no error: oslo ignores options it does not know too.
func (o *Options) Set(name, value string) (ok bool, err error) {
	fail := func(e error) (bool, error) {
		return true, fmt.Errorf("%w: %s=%q: %v", ErrInvalidOption, name, value, e)
	}
	boolean := func(dst *bool) (bool, error) {
		b, err := parseBool(value)
		if err != nil {
			return fail(err)
		}
		*dst = b
		return true, nil
	}
	integer := func(dst *int, minimum int) (bool, error) {
		n, err := strconv.Atoi(value)
		if err != nil {
			return fail(err)
		}
		if n < minimum {
			return fail(fmt.Errorf("must be at least %d", minimum))
		}
		*dst = n
		return true, nil
	}
	seconds := func(dst *time.Duration, minimum float64) (bool, error) {
		f, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return fail(err)
		}
		if f < minimum {
			return fail(fmt.Errorf("must be at least %g", minimum))
		}
		*dst = time.Duration(f * float64(time.Second))
		return true, nil
	}
	switch name {
	case "amqp_durable_queues":
		return boolean(&o.DurableQueues)
	case "amqp_auto_delete":
		return boolean(&o.AutoDelete)
	case "rabbit_ha_queues":
		return boolean(&o.HAQueues)
	case "rabbit_quorum_queue":
		return boolean(&o.QuorumQueue)
	case "rabbit_quorum_delivery_limit":
		return integer(&o.QuorumDeliveryLimit, 0)
	case "rabbit_quroum_max_memory_length", "rabbit_quorum_max_memory_length":
		return integer(&o.QuorumMaxMemoryLength, 0)
	case "rabbit_quroum_max_memory_bytes", "rabbit_quorum_max_memory_bytes":
		return integer(&o.QuorumMaxMemoryBytes, 0)
	case "rabbit_transient_queues_ttl":
		return seconds(&o.TransientQueuesTTL, 1)
	case "rabbit_qos_prefetch_count":
		return integer(&o.PrefetchCount, 0)
	case "heartbeat_timeout_threshold":
		return seconds(&o.HeartbeatTimeout, 0)
	case "kombu_reconnect_delay":
		return seconds(&o.ReconnectDelay, 0)
	case "rabbit_retry_interval":
		return seconds(&o.RetryInterval, 0)
	case "rabbit_retry_backoff":
		return seconds(&o.RetryBackoff, 0)
	case "rabbit_interval_max":
		return seconds(&o.IntervalMax, 0)
	case "kombu_missing_consumer_retry_timeout":
		return seconds(&o.MissingConsumerRetryTimeout, 0)
	case "rabbit_use_ssl", "ssl":
		return boolean(&o.UseSSL)
	case "ssl_ca_file", "kombu_ssl_ca_certs":
		o.SSLCAFile = value
		return true, nil
	case "ssl_cert_file", "kombu_ssl_certfile":
		o.SSLCertFile = value
		return true, nil
	case "ssl_key_file", "kombu_ssl_keyfile":
		o.SSLKeyFile = value
		return true, nil
	case "rpc_response_timeout":
		return seconds(&o.ResponseTimeout, 0)
	case "executor_thread_pool_size":
		return integer(&o.ExecutorPoolSize, 1)
	}
	return false, nil
}

// ApplyQuery sets the options given in a transport URL's query string.
func (o *Options) ApplyQuery(q url.Values) error {
	for name, values := range q {
		if len(values) == 0 {
			continue
		}
		if _, err := o.Set(name, values[len(values)-1]); err != nil {
			return err
		}
	}
	return nil
}

// Validate refuses the combinations oslo refuses.
func (o Options) Validate() error {
	if o.QuorumQueue && o.HAQueues {
		return fmt.Errorf("%w: rabbit_quorum_queue and rabbit_ha_queues are both enabled; queues are quorum or HA (mirrored), not both", ErrInvalidOption)
	}
	if o.ExecutorPoolSize < 1 {
		return fmt.Errorf("%w: executor_thread_pool_size must be at least 1", ErrInvalidOption)
	}
	return nil
}

// durable is oslo's Connection.durable: quorum queues must be durable.
func (o Options) durable() bool { return o.DurableQueues || o.QuorumQueue }
