package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// Backend is the Kafka backend. It implements [tiered.Backend].
//
// It holds one Sarama client with one idempotent producer (for the
// application's publishes and every tier and dead-letter copy) and the
// admin, which shares that client. Each subscription has a client of its
// own: a consumer group's requests (a JoinGroup waits for the whole
// rebalance, a fetch for up to MaxWaitTime) would stall every other group
// sharing its connection.
type Backend struct {
	config   Config
	logger   watermill.LoggerAdapter
	client   sarama.Client
	producer *producer

	mu          sync.Mutex
	admin       sarama.ClusterAdmin
	appendTimes map[string]bool // tier topic: whether its timestamps are LogAppendTime
	closed      bool

	inspect inspector // ListTopics and Lag (inspect.go)
}

var _ tiered.Backend = (*Backend)(nil)

// New connects to the brokers and returns the backend. It returns when the
// brokers answered or ctx ended, whichever comes first: against brokers
// that do not answer (a hung broker, a wrong port) the error wraps
// [ErrNoAnswer] and ctx's error.
func New(ctx context.Context, config Config, logger watermill.LoggerAdapter) (*Backend, error) {
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	config.setDefaults()
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	b := &Backend{config: config, logger: logger, appendTimes: map[string]bool{}}
	type conn struct {
		client   sarama.Client
		producer *producer
	}
	c, err := await(ctx, func() (conn, error) {
		client, err := sarama.NewClient(config.Brokers, config.producerConfig())
		if err != nil {
			return conn{}, err
		}
		p, err := newProducer(client, marshaler{partitionKey: config.PartitionKey}, logger)
		if err != nil {
			_ = client.Close()
			return conn{}, fmt.Errorf("idempotent producer: %w", err)
		}
		return conn{client, p}, nil
	}, func(c conn) {
		_ = c.producer.close()
		_ = c.client.Close()
	})
	if err != nil {
		return nil, fmt.Errorf("connect to kafka %v: %w", config.Brokers, err)
	}
	b.client, b.producer = c.client, c.producer
	return b, nil
}

// Open opens the backend a URL names (see [ParseURL]), honouring ctx as
// [New] does. kafka://embedded is served by package pubsub/embedded, not
// here.
func Open(ctx context.Context, rawURL string, logger watermill.LoggerAdapter) (*Backend, error) {
	config, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	if slices.Contains(config.Brokers, embeddedHost) {
		return nil, fmt.Errorf("kafka URL %q: %w", rawURL, errEmbedded)
	}
	return New(ctx, config, logger)
}

// Publisher returns the shared publisher. Publish returns once every
// in-sync replica has the records, with an error wrapping
// [tiered.ErrUnpublishable] when publishing them again cannot succeed (too
// large, unknown or invalid topic, not authorized, rejected by policy or
// config).
//
// One exception makes the pipelined consumer work: a tier or dead-letter
// copy of a message this backend consumed (the same UUID, with retry
// metadata, published with the message's context or one that keeps its
// values, as the retry middleware does) is produced asynchronously, and
// Publish returns at once. The consumed record then stays unresolved, and
// its offset uncommitted, until the copy is confirmed; a copy that fails
// is produced again, or replaced by a dead-letter stub when it can never
// be published (see the package doc).
func (b *Backend) Publisher() message.Publisher { return publisher{b} }

// Subscriber returns a subscriber in consumer group
// ConsumerGroupPrefix+params.Group, session-aware and pipelined, for a
// handler's own topic (params.Delay == 0) and for a tier (params.Delay > 0)
// alike; see the package doc.
func (b *Backend) Subscriber(params tiered.SubscribeParams) (message.Subscriber, error) {
	if params.Group == "" {
		return nil, errors.New("empty consumer group")
	}
	if params.Delay < 0 {
		return nil, fmt.Errorf("negative tier delay %v", params.Delay)
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	return b.newSubscriber(params), nil
}

// Close closes the producer (after the copies it holds were confirmed or
// failed) and the client. Subscribers are closed by their owners, before.
// It is safe to call more than once.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	return errors.Join(b.inspect.close(), b.producer.close(), b.client.Close())
}

// Brokers returns the bootstrap addresses the backend uses.
func (b *Backend) Brokers() []string { return append([]string(nil), b.config.Brokers...) }

// publisher keeps callers from closing the shared producer.
type publisher struct{ b *Backend }

func (p publisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 1 {
		if d := deliveryOf(msgs[0].Context()); d != nil && d.c.s.b == p.b && d.isCopy(msgs[0]) && d.copyAsync(topic, msgs[0]) {
			return nil
		}
	}
	return p.b.producer.publish(topic, msgs)
}

func (publisher) Close() error { return nil }
