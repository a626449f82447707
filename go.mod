module github.com/vcagent/vcagent

go 1.25.0

require (
	github.com/cenkalti/backoff/v4 v4.3.0
	github.com/gophercloud/gophercloud/v2 v2.16.0
	github.com/rabbitmq/amqp091-go v1.16.0
	github.com/rs/zerolog v1.35.1
	github.com/vmware/govmomi v0.56.0
)

require (
	github.com/google/uuid v1.6.0 // indirect
	github.com/kelseyhightower/envconfig v1.4.0 // indirect
	github.com/mattn/go-colorable v0.1.14 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	golang.org/x/sys v0.47.0 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)
