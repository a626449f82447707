package rpc

import "time"

// ServerObserver is told what a server does, for metrics. Its methods are
// called on the server's goroutines and must not block.
type ServerObserver interface {
	// RequestStarted is called when a request is dispatched.
	RequestStarted(topic, method string)
	// RequestDone is called when it has been handled: outcome is "ok" or
	// the Python exception class the caller gets ("NoSuchMethod", …).
	RequestDone(topic, method, outcome string, d time.Duration)
	// Rejected is called for a message dropped as undecodable.
	Rejected(topic string)
}

// Publish kinds reported to Config.OnPublish.
const (
	PublishCall         = "call"
	PublishCast         = "cast"
	PublishReply        = "reply"
	PublishNotification = "notification"
)
