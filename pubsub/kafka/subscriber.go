package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// Tier clients fetch little: a tier consumer only needs the record at the
// head of each partition, and the records behind it may wait a whole delay.
// A tier partition holds at most tierChannelBuffer records in Sarama's
// channel, one fetch (tierFetchBytes, or the one batch that is larger), and
// tierQueueBytes of records (at least one) in the claim's read-ahead, which
// keeps Sarama from pausing the partition while the head waits (see
// recordQueue).
const (
	tierChannelBuffer = 4
	tierFetchBytes    = 64 << 10
	tierQueueBytes    = 1 << 20
)

// subscriber consumes one topic per Subscribe in a consumer group, for a
// handler's own topic and for its tiers alike.
//
// Each partition it is given (a claim) is read in offset order into an
// offset tracker. On a handler's own topic, a record is handed to the
// router once the one before it was acked: handler calls stay one after
// another, in offset order, but the partition does not wait for the tier
// copy of a failed message, which is produced asynchronously and resolves
// the record when confirmed (copy.go). On a tier topic, the head of the
// partition is handed on at once and held by the holding subscriber above,
// but nothing behind it until it is due (one hold per partition, the rest
// stays in the read-ahead); due records are handed on concurrently across
// keys and in order within a key. Either way the partition is committed up to its oldest
// unresolved record, and reads at most Config.PartitionWindow offsets
// ahead of it.
//
// How it ends: Close or the subscription's context cancels the context
// given to Sarama, which ends the session; a rebalance ends it too. Each
// claim then stops handing records on, waits up to Config.DrainTimeout for
// those handed on to be acked and their copies confirmed, commits, cancels
// the messages' contexts and returns. When every claim returned, the
// consumer group closes, then the output channel. Close waits for all of
// it.
type subscriber struct {
	b      *Backend
	params tiered.SubscribeParams
	group  string
	tier   bool
	delay  time.Duration
	dlq    string
	config *sarama.Config
	logger watermill.LoggerAdapter

	mu      sync.Mutex
	closed  bool
	closing chan struct{}
	wg      sync.WaitGroup
}

func (b *Backend) newSubscriber(params tiered.SubscribeParams) *subscriber {
	cfg := b.config.consumerConfig()
	s := &subscriber{
		b:       b,
		params:  params,
		group:   b.config.ConsumerGroupPrefix + params.Group,
		tier:    params.Delay > 0,
		delay:   params.Delay,
		dlq:     params.DLQ,
		config:  cfg,
		logger:  b.logger,
		closing: make(chan struct{}),
	}
	if s.tier {
		cfg.ChannelBufferSize = tierChannelBuffer
		cfg.Consumer.Fetch.Default = tierFetchBytes
	}
	return s
}

// Subscribe joins the consumer group on topic and returns a channel of its
// messages, closed when the subscription has ended (ctx or Close) and every
// message handed on was resolved or let go.
func (s *subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("subscribe to %s: %w", topic, ErrClosed)
	}
	if err := tiered.ValidateTopicName(topic); err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	s.wg.Add(1)
	go s.run(ctx, topic, out)
	return out, nil
}

// Close ends every subscription and waits until their channels are
// closed. It is safe to call more than once, and concurrently with
// Subscribe.
func (s *subscriber) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *subscriber) run(ctx context.Context, topic string, out chan *message.Message) {
	defer s.wg.Done()
	defer close(out)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	fields := watermill.LogFields{"topic": topic, "consumer_group": s.group}

	var group sarama.ConsumerGroup
	for {
		var err error
		group, err = await(ctx, func() (sarama.ConsumerGroup, error) {
			return sarama.NewConsumerGroup(s.b.config.Brokers, s.group, s.config)
		}, func(g sarama.ConsumerGroup) { _ = g.Close() })
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		s.logger.Error("Cannot join Kafka consumer group, trying again", err, fields)
		if !sleep(ctx, time.Second) {
			return
		}
	}
	var loops sync.WaitGroup
	loops.Add(1)
	go func() {
		defer loops.Done()
		for err := range group.Errors() {
			s.logger.Error("Kafka consumer group error", err, fields)
		}
	}()
	defer loops.Wait()
	defer func() {
		if err := group.Close(); err != nil {
			s.logger.Info("Closing Kafka consumer group failed", fields.Add(watermill.LogFields{"err": err.Error()}))
		}
	}()

	h := &groupHandler{s: s, topic: topic, out: out, fields: fields}
	if s.tier {
		h.appendTime = s.b.logAppendTime(ctx, topic)
	}
	for ctx.Err() == nil {
		// Consume returns at the end of each session (a rebalance); join
		// again until the subscription ends.
		err := group.Consume(ctx, []string{topic}, h)
		if err == nil || ctx.Err() != nil {
			continue
		}
		if errors.Is(err, sarama.ErrClosedConsumerGroup) {
			return
		}
		s.logger.Error("Kafka consume failed, joining again", err, fields)
		sleep(ctx, time.Second)
	}
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// groupHandler is the sarama.ConsumerGroupHandler of one subscription.
type groupHandler struct {
	s          *subscriber
	topic      string
	out        chan<- *message.Message
	fields     watermill.LogFields
	appendTime bool // the topic's record timestamps are the broker's append times
}

func (*groupHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (*groupHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h *groupHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, sc sarama.ConsumerGroupClaim) error {
	c := h.newClaim(sess, sc)
	c.consume(sc.Messages())
	c.finish()
	return nil
}

// unmarshal makes a message of a record: with watermill-kafka's
// DefaultMarshaler on the tier topics this library writes, else with the
// configured Unmarshaler, or, when that fails on a record this library
// wrote (a dead-letter topic read back), with the DefaultMarshaler.
func (c *claim) unmarshal(cm *sarama.ConsumerMessage) (*message.Message, error) {
	if c.s.tier {
		return unmarshalRecord(cm), nil
	}
	if _, ok := c.s.b.config.Unmarshaler.(wkafka.DefaultMarshaler); ok {
		return unmarshalRecord(cm), nil
	}
	msg, err := c.s.b.config.Unmarshaler.Unmarshal(cm)
	if err != nil && writtenByUs(cm) {
		return unmarshalRecord(cm), nil
	}
	return msg, err
}

// writtenByUs reports whether cm carries a Watermill UUID and retry
// metadata, as the copies this library writes do.
func writtenByUs(cm *sarama.ConsumerMessage) bool {
	var uuid, retry bool
	for _, h := range cm.Headers {
		switch string(h.Key) {
		case wkafka.UUIDHeaderKey:
			uuid = true
		case tiered.KeyAttempt:
			retry = true
		}
	}
	return uuid && retry
}

// await runs f and returns what it returns, or ctx's error wrapped in
// [ErrNoAnswer] as soon as ctx ends; what f returns after that is given to
// discard (nil: dropped).
func await[T any](ctx context.Context, f func() (T, error), discard func(T)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	var mu sync.Mutex
	abandoned := false
	go func() {
		v, err := f()
		mu.Lock()
		defer mu.Unlock()
		if abandoned {
			if err == nil && discard != nil {
				discard(v)
			}
			return
		}
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		select {
		case r := <-done:
			return r.v, r.err
		default:
		}
		abandoned = true
		var zero T
		return zero, fmt.Errorf("%w: %w", ErrNoAnswer, context.Cause(ctx))
	}
}
