package redisstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/redis/go-redis/v9"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// ackTimeout bounds the XACK that closing a subscription sends itself.
const ackTimeout = 5 * time.Second

// waitingInFlight is logged at Debug when a subscription stops while a
// handler works on its message.
const waitingInFlight = "Subscription closing, waiting for the message in flight"

// subscriber is one subscription's consumer in its consumer group: a
// watermill-redisstream subscriber, and a loop on its output that
// dead-letters the entries it could not decode, delays redeliveries after a
// Nack, and on close lets the message in flight finish.
type subscriber struct {
	b        *Backend
	params   tiered.SubscribeParams
	group    string
	consumer string
	claim    claimSettings
	nonce    string
	inner    *wmredis.Subscriber
	logger   watermill.LoggerAdapter

	// ctx ends when the subscriber is closed.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

func (b *Backend) newSubscriber(params tiered.SubscribeParams) (*subscriber, error) {
	s := &subscriber{
		b:        b,
		params:   params,
		group:    b.config.ConsumerGroupPrefix + params.Group,
		consumer: b.consumerPrefix + watermill.NewShortUUID(),
		claim:    b.config.claim(params.Delay),
		nonce:    watermill.NewUUID(),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.logger = b.logger.With(watermill.LogFields{"consumer_group": s.group, "consumer": s.consumer})
	inner, err := wmredis.NewSubscriber(wmredis.SubscriberConfig{
		Client:                        streamClient{b.client},
		Unmarshaller:                  unmarshaller{nonce: s.nonce},
		Consumer:                      s.consumer,
		ConsumerGroup:                 s.group,
		NackResendSleep:               wmredis.NoSleep, // the loop below waits
		MaxIdleTime:                   s.claim.MaxIdleTime,
		ClaimInterval:                 s.claim.ClaimInterval,
		CheckConsumersInterval:        s.claim.CheckConsumersInterval,
		ConsumerTimeout:               s.claim.ConsumerTimeout,
		OldestId:                      "0", // a new group reads the stream from its start
		DisableIndefiniteInitialBlock: true,
		ShouldStopOnReadErrors:        s.stopOnReadError,
	}, quietLogger{s.logger})
	if err != nil {
		s.cancel()
		return nil, err
	}
	s.inner = inner
	return s, nil
}

// stopOnReadError ends the read loop when the subscription is closing or
// the client was closed, instead of logging the error and retrying.
func (s *subscriber) stopOnReadError(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, redis.ErrClosed)
}

// Subscribe consumes topic in the subscriber's consumer group.
func (s *subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if s.params.Topic != "" && topic != s.params.Topic {
		return nil, fmt.Errorf("this subscriber was made for topic %q (its claim settings depend on it), not %q", s.params.Topic, topic)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	// The inner subscription does not end with ctx: when ctx ends, the
	// loop first lets the message in flight finish (see forward).
	innerCtx, innerCancel := context.WithCancel(context.WithoutCancel(ctx))
	in, err := s.inner.Subscribe(innerCtx, topic)
	if err != nil {
		innerCancel()
		return nil, fmt.Errorf("subscribe to redis stream %s as group %s: %w", topic, s.group, err)
	}
	// stop ends when ctx ends or the subscriber is closed.
	stop, stopCancel := context.WithCancel(ctx)
	unhook := context.AfterFunc(s.ctx, stopCancel)
	out := make(chan *message.Message)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(out)
		defer innerCancel()
		defer stopCancel()
		defer unhook()
		l := &loop{s: s, topic: topic, in: in, out: out, stop: stop}
		l.run()
	}()
	return out, nil
}

// Close ends every subscription, letting the message in flight in each
// finish for at most Config.CloseTimeout, then closes the
// watermill-redisstream subscriber (never the Redis client). It is safe to
// call more than once.
func (s *subscriber) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	s.mu.Unlock()

	s.wg.Wait()
	err := s.inner.Close()
	s.b.forget(s)
	return err
}

// loop is one subscription's relay from the watermill-redisstream output
// to the subscriber's.
type loop struct {
	s     *subscriber
	topic string
	in    <-chan *message.Message
	out   chan<- *message.Message
	stop  context.Context

	// lastAcked is the entry whose Ack was last passed on; it is acked
	// again on the way out, in case the subscription ended before
	// watermill-redisstream sent the XACK.
	lastAcked string
}

func (l *loop) run() {
	defer l.ackLast()
	for {
		var msg *message.Message
		select {
		case m, ok := <-l.in:
			if !ok {
				return
			}
			msg = m
		case <-l.stop.Done():
			return
		}
		if msg.Metadata.Get(markerKey) == l.s.nonce {
			if !l.deadLetter(msg) {
				return
			}
			continue
		}
		if !l.forward(msg) {
			return
		}
	}
}

// forward hands msg on and passes its Ack or Nack back. It returns false
// when the subscription is stopping.
func (l *loop) forward(msg *message.Message) bool {
	id := msg.Metadata.Get(entryIDKey)
	fwd := msg.Copy()
	for _, k := range [...]string{entryIDKey, markerKey, reasonKey} {
		delete(fwd.Metadata, k)
	}
	fwd.SetContext(msg.Context())
	select {
	case l.out <- fwd:
	case <-l.stop.Done():
		return false // left pending: claimed after MaxIdleTime
	}
	select {
	case <-fwd.Acked():
		l.lastAcked = id
		msg.Ack()
		return true
	case <-fwd.Nacked():
		if !l.sleep(l.s.b.config.NackResendSleep) {
			return false
		}
		msg.Nack() // watermill-redisstream delivers it again at once
		return true
	case <-l.stop.Done():
	}

	// Stopping while the handler works on fwd: give it CloseTimeout to
	// finish, and send its Ack to Redis ourselves, since the
	// watermill-redisstream subscription is about to end.
	l.s.logger.Debug(waitingInFlight, watermill.LogFields{"topic": l.topic, "message_uuid": msg.UUID, "entry_id": id})
	timer := time.NewTimer(l.s.b.config.CloseTimeout)
	defer timer.Stop()
	select {
	case <-fwd.Acked():
		l.lastAcked = id
	case <-fwd.Nacked():
	case <-timer.C:
		l.s.logger.Info("Subscription closed before the handler finished; the message will be delivered again", watermill.LogFields{
			"topic": l.topic, "message_uuid": msg.UUID, "entry_id": id,
		})
	}
	return false
}

// ackLast acks the entry last acked once more, in Redis directly: the
// watermill-redisstream subscription may have ended before its XACK.
func (l *loop) ackLast() {
	if l.lastAcked == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), ackTimeout)
	defer cancel()
	if err := l.s.b.client.XAck(ctx, l.topic, l.s.group, l.lastAcked).Err(); err != nil && !errors.Is(err, redis.ErrClosed) {
		l.s.logger.Info("Cannot ack the last message on close; it may be delivered again", watermill.LogFields{
			"topic": l.topic, "entry_id": l.lastAcked, "err": err.Error(),
		})
	}
}

// sleep waits d, or returns false when the subscription stops first.
func (l *loop) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-l.stop.Done():
		return false
	}
}

// deadLetter handles the marker of an entry that could not be decoded: it
// publishes the entry's fields to the dead-letter topic with the reason and
// acks it, or, without a dead-letter topic, logs it and acks it. When the
// publish fails the entry is Nacked and comes back. It returns false when
// the subscription is stopping.
func (l *loop) deadLetter(marker *message.Message) bool {
	id := marker.Metadata.Get(entryIDKey)
	cause := marker.Metadata.Get(reasonKey)
	reason := fmt.Sprintf("stream entry %s of %s could not be decoded as a Watermill message: %s", id, l.topic, cause)
	fields := watermill.LogFields{"topic": l.topic, "entry_id": id, "reason": cause}

	dlq := l.s.params.DLQ
	if dlq == "" {
		fields["fields"] = string(marker.Payload)
		l.s.logger.Error("Dropping a stream entry that could not be decoded (no dead-letter topic)", errors.New(reason), fields)
		marker.Ack()
		return true
	}

	out := message.NewMessage(marker.UUID, marker.Payload)
	out.Metadata.Set(KeyEntryID, id)
	if v := marker.Metadata.Get(KeyBase64Fields); v != "" {
		out.Metadata.Set(KeyBase64Fields, v)
	}
	out.Metadata.Set(wmiddleware.ReasonForPoisonedKey, tiered.Truncate(reason, tiered.MaxErrorBytes))
	out.Metadata.Set(wmiddleware.PoisonedTopicKey, l.topic)
	handler := l.s.params.Handler
	if handler == "" {
		handler = l.s.params.Group
	}
	out.Metadata.Set(wmiddleware.PoisonedHandlerKey, handler)
	out.Metadata.Set(wmiddleware.PoisonedSubscriberKey, l.s.consumer)
	out.SetContext(l.stop)
	if err := l.s.b.publish(dlq, out, false); err != nil {
		if l.stop.Err() != nil {
			return false
		}
		l.s.logger.Error("Cannot publish an undecodable stream entry to the dead-letter topic, Nacking it", err, fields)
		if !l.sleep(l.s.b.config.NackResendSleep) {
			return false
		}
		marker.Nack()
		return true
	}
	l.s.logger.Info("Stream entry that could not be decoded sent to the dead-letter topic", watermill.LogFields{
		"topic": dlq, "entry_id": id, "message_uuid": out.UUID, "reason": tiered.Truncate(reason, 200),
	})
	l.lastAcked = id
	marker.Ack()
	if f := l.s.params.OnUndecodable; f != nil {
		f(tiered.UndecodableParams{Topic: l.topic, DLQ: dlq})
	}
	return true
}

// quietLogger logs at Debug the errors that only say that a subscription
// was closed (watermill-redisstream logs "read fail: context canceled" at
// Error on every close).
type quietLogger struct{ watermill.LoggerAdapter }

func (q quietLogger) Error(msg string, err error, fields watermill.LogFields) {
	if errors.Is(err, context.Canceled) || errors.Is(err, redis.ErrClosed) {
		q.LoggerAdapter.Debug(msg, fields.Add(watermill.LogFields{"err": err.Error()}))
		return
	}
	q.LoggerAdapter.Error(msg, err, fields)
}

func (q quietLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return quietLogger{q.LoggerAdapter.With(fields)}
}
