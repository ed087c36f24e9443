package kafka

import (
	"context"
	"fmt"
	"slices"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/twmb/franz-go/pkg/kfake"
)

// EmbeddedURL opens [NewEmbedded] through [Open] and pubsub.Open.
const EmbeddedURL = "kafka://embedded"

// NewEmbedded starts an in-process Kafka-protocol broker (kfake, from
// franz-go) on a free loopback port and returns a backend connected to it
// through the real watermill-kafka/Sarama client. Topics are created on
// demand. Closing the backend stops the broker.
//
// NOT FOR PRODUCTION: the broker keeps everything in memory and loses it
// when the process ends. It exists so that the examples and `go test` run
// with nothing installed.
func NewEmbedded(config Config, logger watermill.LoggerAdapter) (*Backend, error) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		return nil, fmt.Errorf("start embedded kafka: %w", err)
	}
	config.Brokers = cluster.ListenAddrs()
	config.CreateTopics = true
	b, err := New(config, logger)
	if err != nil {
		cluster.Close()
		return nil, err
	}
	b.onClose = cluster.Close
	return b, nil
}

// Open opens the backend a URL names: kafka://host:9092,host2:9092 or
// [EmbeddedURL], both with the parameters of [ParseURL].
func Open(_ context.Context, rawURL string, logger watermill.LoggerAdapter) (*Backend, error) {
	config, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	if slices.Contains(config.Brokers, "embedded") {
		if len(config.Brokers) > 1 {
			return nil, fmt.Errorf("kafka URL %q: \"embedded\" cannot be listed with other brokers", rawURL)
		}
		return NewEmbedded(config, logger)
	}
	return New(config, logger)
}
