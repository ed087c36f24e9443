// Package embedded serves kafka://embedded: an in-process Kafka-protocol
// broker (kfake, from franz-go) behind the real Sarama client of the Kafka
// backend, so that the examples and `go test` run with nothing installed.
//
// It lives in a package of its own so that applications that import
// pubsub or pubsub/kafka do not link an in-memory Kafka broker: only a
// program that imports this package does. [Open] takes every URL that
// pubsub.Open takes, and kafka://embedded besides:
//
//	backend, err := embedded.Open(ctx, "kafka://embedded", logger) // demo
//	backend, err := embedded.Open(ctx, os.Getenv("BROKER_URL"), logger) // anything pubsub.Open opens
//
// NOT FOR PRODUCTION: the broker keeps everything in memory and loses it
// when the backend closes or the process ends.
package embedded

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/retry-kafka/retry-kafka/pubsub"
	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// URL is the URL of the embedded broker. It takes the parameters of
// kafka.ParseURL: "kafka://embedded?group_prefix=demo.".
const URL = kafka.EmbeddedURL

// Open opens the backend that rawURL names: an embedded Kafka broker for
// kafka://embedded (with the parameters of kafka.ParseURL), and whatever
// pubsub.Open opens for every other URL.
func Open(ctx context.Context, rawURL string, logger watermill.LoggerAdapter) (tiered.Backend, error) {
	if !strings.HasPrefix(rawURL, "kafka://") {
		return pubsub.Open(ctx, rawURL, logger)
	}
	config, err := kafka.ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(config.Brokers, "embedded") {
		return pubsub.Open(ctx, rawURL, logger)
	}
	if len(config.Brokers) > 1 {
		return nil, fmt.Errorf("kafka URL %q: \"embedded\" cannot be listed with other brokers", rawURL)
	}
	return NewKafka(ctx, config, logger)
}

// Kafka is a Kafka backend on an embedded broker. Closing it stops the
// broker.
type Kafka struct {
	*kafka.Backend
	cluster *kfake.Cluster
}

// NewKafka starts an embedded Kafka-protocol broker on a free loopback port
// and returns a Kafka backend connected to it with config, whose Brokers
// are replaced by the broker's address and which may create topics.
func NewKafka(ctx context.Context, config kafka.Config, logger watermill.LoggerAdapter) (*Kafka, error) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		return nil, fmt.Errorf("start embedded kafka: %w", err)
	}
	config.Brokers = cluster.ListenAddrs()
	config.CreateTopics = true
	b, err := kafka.New(ctx, config, logger)
	if err != nil {
		cluster.Close()
		return nil, err
	}
	return &Kafka{Backend: b, cluster: cluster}, nil
}

// Unwrap returns the Kafka backend, for code that works on a
// *kafka.Backend (package dlq does).
func (k *Kafka) Unwrap() tiered.Backend { return k.Backend }

// Close closes the backend, then stops the broker. It is safe to call more
// than once.
func (k *Kafka) Close() error {
	err := k.Backend.Close()
	k.cluster.Close()
	return err
}
