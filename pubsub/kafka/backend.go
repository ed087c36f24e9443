package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// Backend is the Kafka backend. It implements [tiered.Backend].
type Backend struct {
	config Config
	logger watermill.LoggerAdapter
	pub    *wkafka.Publisher

	mu      sync.Mutex
	admin   sarama.ClusterAdmin
	closed  bool
	onClose func()

	inspect inspector // ListTopics and Lag (inspect.go)
}

var _ tiered.Backend = (*Backend)(nil)

// New connects a publisher to the brokers and returns the backend.
func New(config Config, logger watermill.LoggerAdapter) (*Backend, error) {
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	config.setDefaults()
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	pub, err := wkafka.NewPublisher(wkafka.PublisherConfig{
		Brokers:               config.Brokers,
		Marshaler:             marshaler{partitionKey: config.PartitionKey},
		OverwriteSaramaConfig: config.saramaConfig(),
	}, logger)
	if err != nil {
		return nil, fmt.Errorf("kafka publisher for %v: %w", config.Brokers, err)
	}
	return &Backend{config: config, logger: logger, pub: pub}, nil
}

// Publisher returns the shared synchronous publisher: Publish returns once
// every in-sync replica has the record.
func (b *Backend) Publisher() message.Publisher { return publisher{b.pub} }

// Subscriber returns a subscriber in consumer group
// ConsumerGroupPrefix+params.Group: watermill-kafka's for a main topic, the
// session-aware tier subscriber for a tier (params.Delay > 0).
func (b *Backend) Subscriber(params tiered.SubscribeParams) (message.Subscriber, error) {
	if params.Group == "" {
		return nil, errors.New("empty consumer group")
	}
	group := b.config.ConsumerGroupPrefix + params.Group
	if params.Delay > 0 {
		return &tierSubscriber{
			brokers: b.config.Brokers,
			group:   group,
			config:  b.config.saramaConfig(),
			resend:  b.config.NackResendSleep,
			logger:  b.logger,
			closing: make(chan struct{}),
		}, nil
	}
	return wkafka.NewSubscriber(wkafka.SubscriberConfig{
		Brokers:               b.config.Brokers,
		Unmarshaler:           wkafka.DefaultMarshaler{},
		OverwriteSaramaConfig: b.config.saramaConfig(),
		ConsumerGroup:         group,
		NackResendSleep:       b.config.NackResendSleep,
	}, b.logger)
}

// Prepare checks the main topic (creating it when Config.CreateTopics
// allows) and creates each missing tier and dead-letter topic with the main
// topic's partition count. Topics that exist are left as they are.

func (b *Backend) Prepare(ctx context.Context, topics tiered.Topics) error {
	admin, err := b.clusterAdmin()
	if err != nil {
		return err
	}
	partitions, err := b.partitions(admin, topics.Main)
	if err != nil {
		return err
	}
	if partitions == 0 {
		if !b.config.CreateTopics {
			return fmt.Errorf("main topic %q does not exist on %v: create it, or set Config.CreateTopics (create_topics=true in the URL)", topics.Main, b.config.Brokers)
		}
		partitions = b.config.MainTopicPartitions
		if err := b.create(admin, topics.Main, partitions); err != nil {
			return err
		}
	}
	for _, t := range append(append([]string(nil), topics.Tiers...), topics.DLQ) {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := b.create(admin, t, partitions); err != nil {
			return err
		}
	}
	return nil
}

// partitions returns the partition count of topic, 0 when it does not
// exist.
func (b *Backend) partitions(admin sarama.ClusterAdmin, topic string) (int32, error) {
	meta, err := admin.DescribeTopics([]string{topic})
	if err != nil {
		return 0, fmt.Errorf("describe topic %q: %w", topic, err)
	}
	for _, m := range meta {
		if m.Name != topic {
			continue
		}
		switch {
		case errors.Is(m.Err, sarama.ErrUnknownTopicOrPartition):
			return 0, nil
		case m.Err != sarama.ErrNoError:
			return 0, fmt.Errorf("describe topic %q: %w", topic, m.Err)
		}
		return int32(len(m.Partitions)), nil
	}
	return 0, nil
}

func (b *Backend) create(admin sarama.ClusterAdmin, topic string, partitions int32) error {
	err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: b.config.ReplicationFactor}, false)
	if err == nil {
		b.logger.Info("Created Kafka topic", watermill.LogFields{"topic": topic, "partitions": partitions})
		return nil
	}
	if errors.Is(err, sarama.ErrTopicAlreadyExists) {
		return nil
	}
	return fmt.Errorf("create topic %q: %w", topic, err)
}

func (b *Backend) clusterAdmin() (sarama.ClusterAdmin, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errors.New("backend closed")
	}
	if b.admin == nil {
		admin, err := sarama.NewClusterAdmin(b.config.Brokers, b.config.saramaConfig())
		if err != nil {
			return nil, fmt.Errorf("kafka admin for %v: %w", b.config.Brokers, err)
		}
		b.admin = admin
	}
	return b.admin, nil
}

// Close closes the publisher and the admin client (and the embedded broker
// of [NewEmbedded]). Subscribers are closed by their owners. It is safe to
// call more than once.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	var errs []error
	if b.admin != nil {
		errs = append(errs, b.admin.Close())
	}
	errs = append(errs, b.inspect.close())
	errs = append(errs, b.pub.Close())
	if b.onClose != nil {
		b.onClose()
	}
	return errors.Join(errs...)
}

// Brokers returns the bootstrap addresses the backend uses.
func (b *Backend) Brokers() []string { return append([]string(nil), b.config.Brokers...) }

// publisher keeps callers from closing the shared publisher.
type publisher struct{ pub *wkafka.Publisher }

func (p publisher) Publish(topic string, msgs ...*message.Message) error {
	return p.pub.Publish(topic, msgs...)
}

func (publisher) Close() error { return nil }
