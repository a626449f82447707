// Package rpc speaks oslo.messaging's rabbit driver over AMQP 0-9-1, so that a
// Go process can serve and call OpenStack services on their own bus.
//
// It owns the wire: the transport URL and driver options, the two broker
// connections (one to listen, one to send) and their reconnection, the
// topology oslo declares (topic exchange, topic and server queues, the
// fanout exchange and queue, reply queues, notification queues), the
// "oslo.version" 2.0 envelope, request contexts, the RPC server and its
// dispatcher, the RPC client, remote failures and the notifier.
//
// It knows no OpenStack service: nothing here speaks of nova, cinder or
// neutron, and the package must not import vCenter code (govmomi) or any
// package under agent/. The wire contract it implements is oslo.messaging
// 14.x (OpenStack Zed); the recorded messages in fixtures/oslo are the judge.
package rpc
