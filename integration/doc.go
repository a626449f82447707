// Package integration holds vcagent's end-to-end tests: the agent and its
// layers against real peers (the Python oslo.messaging library, and later
// the real OpenStack Zed services) on the local RabbitMQ.
//
// The tests are behind the "integration" build tag and are run by the
// README's test command, which installs the Python peers and starts the
// broker first; a missing peer fails a test, it never skips it.
package integration
