package redisstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/redis/go-redis/v9"

	"github.com/retry-kafka/retry-kafka/internal/streamid"
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
// Nack, refreshes the claim on the entries in hand, and on close lets the
// message in flight finish.
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
		Client:                        streamClient{UniversalClient: b.client},
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
	// Its reads note in held what the consumer has in hand.
	held := newInHand(topic)
	innerCtx, innerCancel := context.WithCancel(withInHand(context.WithoutCancel(ctx), held))
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
		l := &loop{s: s, topic: topic, in: in, out: out, stop: stop, inHand: held}
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
//
// Its goroutines: run relays until stop ends (or the inner channel
// closes), then waits for the message in flight, acks the last entry once
// more and stops refresh; the Subscribe goroutine then ends the inner
// subscription (and with it the context of a message not acked), and
// closes out.
type loop struct {
	s     *subscriber
	topic string
	in    <-chan *message.Message
	out   chan<- *message.Message
	stop  context.Context
	// inHand is what the subscription's consumer read and has not acked.
	inHand *inHand

	// lastAcked is the entry whose Ack was last passed on; it is acked
	// again on the way out, in case the subscription ended before
	// watermill-redisstream sent the XACK.
	lastAcked string

	// failingID is the undecodable entry whose dead-letter publish failed
	// failures times in a row.
	failingID string
	failures  int
}

func (l *loop) run() {
	refreshCtx, stopRefresh := context.WithCancel(context.Background())
	refreshed := make(chan struct{})
	go func() {
		defer close(refreshed)
		l.refresh(refreshCtx)
	}()
	defer func() {
		stopRefresh()
		<-refreshed
	}()
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

// refresh keeps this consumer's claim on the entries it has in hand fresh,
// every RefreshInterval, until ctx ends: XCLAIM ... JUSTID to itself resets
// an entry's idle time (and not its delivery count), so no other consumer
// claims an entry that this one holds until due, runs, or read ahead
// behind them. It is single-key, so it works on Redis Cluster too.
func (l *loop) refresh(ctx context.Context) {
	ticker := time.NewTicker(l.s.claim.RefreshInterval)
	defer ticker.Stop()
	failing := false
	for {
		select {
		case <-ticker.C:
		case <-ctx.Done():
			return
		}
		ids := l.inHand.list()
		if len(ids) == 0 {
			continue
		}
		still, err := l.s.b.client.XClaimJustID(ctx, &redis.XClaimArgs{
			Stream: l.topic, Group: l.s.group, Consumer: l.s.consumer, MinIdle: 0, Messages: ids,
		}).Result()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !failing {
				l.s.logger.Info("Cannot refresh the claim on the entries in hand; if it fails for MaxIdleTime, another consumer may process them again", watermill.LogFields{
					"topic": l.topic, "entries": len(ids), "err": err.Error(),
				})
			}
			failing = true
			continue
		}
		if failing {
			l.s.logger.Info("Refreshing the claim on the entries in hand works again", watermill.LogFields{"topic": l.topic})
			failing = false
		}
		l.inHand.drop(ids, still)
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
	if fwd.UUID == "" {
		// Written without Watermill's UUID: an identity derived from
		// where it was first consumed, the same on every redelivery,
		// which every copy (tier, dead letter) keeps.
		fwd.UUID = tiered.OriginUUID("redis", l.topic, id)
	}
	// watermill-redisstream's message context ends at the Ack, as
	// Watermill's pub/subs do; the Delivery stays readable after it, for
	// the copy of a message acked early (InstantAck).
	fwd.SetContext(tiered.WithDelivery(msg.Context(), l.delivery(id)))
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
	l.s.logger.Debug(waitingInFlight, watermill.LogFields{"topic": l.topic, "message_uuid": fwd.UUID, "entry_id": id})
	timer := time.NewTimer(l.s.b.config.CloseTimeout)
	defer timer.Stop()
	select {
	case <-fwd.Acked():
		l.lastAcked = id
	case <-fwd.Nacked():
	case <-timer.C:
		l.s.logger.Info("Subscription closed before the handler finished; the message will be delivered again", watermill.LogFields{
			"topic": l.topic, "message_uuid": fwd.UUID, "entry_id": id,
		})
	}
	return false
}

// delivery is what the subscription knows of entry id of its stream: the
// entry ID's time (the server's clock when it stored the entry, unless a
// producer chose the ID) and its coordinates.
func (l *loop) delivery(id string) *tiered.Delivery {
	stream := l.topic
	return &tiered.Delivery{
		AppendTime: streamid.Time(id),
		WriteOrigin: func(md message.Metadata) {
			md.Set(tiered.KeyRedisStream, stream)
			md.Set(tiered.KeyRedisEntryID, id)
		},
	}
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

// maxBackOff caps the wait between two tries of a dead-letter publish
// (unless NackResendSleep is longer).
const maxBackOff = 30 * time.Second

// backOff is the wait before try n+1 of a publish that failed n times:
// base, doubling, at most maxBackOff.
func backOff(base time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < maxBackOff; i++ {
		d *= 2
	}
	return min(d, max(base, maxBackOff))
}

// deadLetter handles the marker of an entry that could not be decoded: it
// publishes the entry's fields to the dead-letter topic with the reason and
// acks it, or, without a dead-letter topic, logs it and acks it. A copy that
// can never be published (too large) is replaced by a stub without the
// fields. When the publish fails the entry is Nacked and comes back, after a
// wait that grows from NackResendSleep to 30s; it is logged at Error once. It returns false when
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

	out := message.NewMessage(tiered.OriginUUID("redis", l.topic, id), marker.Payload)
	out.Metadata.Set(tiered.KeyRedisStream, l.topic)
	out.Metadata.Set(tiered.KeyRedisEntryID, id)
	if v := marker.Metadata.Get(KeyBase64Fields); v != "" {
		out.Metadata.Set(KeyBase64Fields, v)
	}
	out.Metadata.Set(wmiddleware.ReasonForPoisonedKey, tiered.Truncate(reason, tiered.MaxErrorBytes))
	out.Metadata.Set(wmiddleware.PoisonedTopicKey, l.topic)
	out.Metadata.Set(wmiddleware.PoisonedHandlerKey, l.s.handler())
	out.Metadata.Set(wmiddleware.PoisonedSubscriberKey, l.s.consumer)
	out.SetContext(l.stop)
	err := l.s.b.publish(dlq, out, false)
	if errors.Is(err, tiered.ErrUnpublishable) {
		// Too large (base64 and JSON make fields larger), say: a stub
		// without the fields, which XRANGE finds by the entry ID
		// (tiered.KeyPayloadDropped gives their size).
		stub := tiered.DeadLetterStub(out, fmt.Sprintf("%s; its dead letter cannot be published (%v)", reason, err))
		delete(stub.Metadata, KeyBase64Fields)
		if stubErr := l.s.b.publish(dlq, stub, false); stubErr == nil {
			err = nil
			out = stub
		} else {
			err = errors.Join(err, stubErr)
		}
	}
	if err != nil {
		if l.stop.Err() != nil {
			return false
		}
		// Once at Error per entry, then at Debug, with a growing wait.
		if l.failingID != id {
			l.failingID, l.failures = id, 0
		}
		l.failures++
		if l.failures == 1 {
			l.s.logger.Error("Cannot publish an undecodable stream entry to the dead-letter topic, trying again", err, fields)
		} else {
			l.s.logger.Debug("Dead-letter publish of an undecodable stream entry failed again", fields.Add(watermill.LogFields{
				"attempt": l.failures, "err": err.Error(),
			}))
		}
		if !l.sleep(backOff(l.s.b.config.NackResendSleep, l.failures)) {
			return false
		}
		marker.Nack()
		return true
	}
	l.failingID = ""
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

// handler names the handler for the poison keys: params.Handler, or
// without it the group without the "{topic}." that [tiered.Topics.Group]
// puts before the handler's name on its own topic (on a tier, whose group
// is the tier topic, the group).
func (s *subscriber) handler() string {
	if s.params.Handler != "" {
		return s.params.Handler
	}
	if h, ok := strings.CutPrefix(s.params.Group, s.params.Topic+"."); ok && s.params.Topic != "" && h != "" {
		return h
	}
	return s.params.Group
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
