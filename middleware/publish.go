package middleware

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/cenkalti/backoff/v4"

	"github.com/retry-kafka/retry-kafka/internal/instrument"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// Back-offs of the failure path. They are not options: the first is short
// enough that a broker's blip costs little, the caps keep a long outage
// from turning into a hot loop.
const (
	// publishRetryFirst and publishRetryMax bound the wait between two
	// tries of a copy's publish that failed for a temporary reason.
	publishRetryFirst = 50 * time.Millisecond
	publishRetryMax   = 5 * time.Second
	// earlyAckBudget is how long the publish of a message that was acked
	// before its handler ended is tried: nothing can bring it back after
	// that, and its handler's goroutine must end.
	earlyAckBudget = time.Minute
	// stuckFirst and stuckMax bound the delay before a message whose copy
	// and stub both cannot be published is Nacked, growing per try.
	stuckFirst = 250 * time.Millisecond
	stuckMax   = 30 * time.Second
)

// publish publishes out, the copy of msg for its next hop, to the topic of
// to. A temporary failure is retried as a publish while the subscriber
// keeps msg (never by running the handler again); a copy that can never be
// published is replaced by a dead-letter stub, and stubbed is true. It
// returns an error, for the router to Nack msg, only when the subscriber
// gave msg up or nothing could be published. attempt is the attempts that
// failed so far, for the spans.
func (r *Retry) publish(msg *message.Message, delivered context.Context, from *hop, to *target, out *message.Message, attempt int) (stubbed bool, err error) {
	err = r.send(msg, delivered, to, out, attempt)
	if err == nil {
		r.stuck.forget(msg.UUID)
		return false, nil
	}
	if !errors.Is(err, tiered.ErrUnpublishable) {
		return false, err
	}

	topic := to.topic
	reason := fmt.Sprintf("the copy for %s cannot be published: %v", topic, err)
	r.logger.Info("Copy cannot be published, dead-lettering a stub instead", watermill.LogFields{
		"topic": topic, "message_uuid": msg.UUID, "dlq": r.topics.DLQ, "err": err.Error(),
	})
	stub := tiered.DeadLetterStub(out, reason)
	if topic != r.topics.DLQ {
		r.poison(stub, delivered, from, stub.Metadata.Get(tiered.KeyLastError))
	}
	stubErr := r.send(msg, delivered, r.dlq, stub, attempt)
	if stubErr == nil {
		r.stuck.forget(msg.UUID)
		return true, nil
	}
	if !errors.Is(stubErr, tiered.ErrUnpublishable) {
		return false, stubErr
	}

	// Nothing this message makes can be published (the dead-letter topic
	// itself is gone, say). Nack it, later each time, so that it comes back
	// without a hot loop once someone mends the broker.
	tries, wait := r.stuck.add(msg.UUID)
	failure := fmt.Errorf("nothing can be published for this message: %s: %w; and its dead-letter stub: %w", reason, err, stubErr)
	fields := watermill.LogFields{"topic": topic, "dlq": r.topics.DLQ, "message_uuid": msg.UUID, "tries": tries, "nack_in": wait.String()}
	if tries == 1 {
		r.logger.Error("Cannot publish a failed message's copy, nor a stub to the dead-letter topic: Nacking it, later on each try", failure, fields)
	} else {
		r.logger.Debug("Still cannot publish a failed message's copy or stub", fields)
	}
	sleep(delivered, msg, wait)
	return false, failure
}

// send publishes out to the topic of to (see publishRetrying), in a send
// span when tracing is on: the span's trace context goes into out's
// metadata, so that the next hop belongs to the trace.
func (r *Retry) send(msg *message.Message, delivered context.Context, to *target, out *message.Message, attempt int) error {
	if to.send == nil {
		_, err := r.publishRetrying(msg, delivered, to, out)
		return err
	}
	span := to.send.StartSend(out, attempt, to.tier)
	defer span.End()
	tries, err := r.publishRetrying(msg, delivered, to, out)
	if span.IsRecording() {
		span.SetAttributes(instrument.AttrPublishTries.Int(tries))
	}
	if err != nil {
		instrument.Fail(span, err)
	}
	return err
}

// publishRetrying publishes out to the topic of to, retrying temporary
// failures with a back-off until the publish succeeds, fails for good
// ([tiered.ErrUnpublishable]) or the subscriber gives msg up. It returns
// the tries made.
func (r *Retry) publishRetrying(msg *message.Message, delivered context.Context, to *target, out *message.Message) (int, error) {
	var b *backoff.ExponentialBackOff // made at the first failure: most publishes succeed
	start := time.Now()
	topic := to.topic
	for tries := 1; ; tries++ {
		err := r.pub.Publish(topic, out)
		if err == nil {
			return tries, nil
		}
		if to.failures != nil {
			to.failures.Inc()
		}
		err = fmt.Errorf("publish to %s: %w", topic, err)
		if errors.Is(err, tiered.ErrUnpublishable) {
			return tries, err
		}
		acked := isAcked(msg)
		if acked && time.Since(start) > earlyAckBudget {
			r.logger.Error("Giving up the copy of a message that was acked before its handler ended: it is lost", err, watermill.LogFields{
				"topic": topic, "message_uuid": msg.UUID, "tries": tries,
			})
			return tries, err
		}
		if b == nil {
			b = backoff.NewExponentialBackOff()
			b.InitialInterval = publishRetryFirst
			b.MaxInterval = publishRetryMax
			b.MaxElapsedTime = 0
			b.Reset()
		}
		wait := b.NextBackOff()
		fields := watermill.LogFields{"topic": topic, "message_uuid": msg.UUID, "tries": tries, "retry_in": wait.String(), "err": err.Error()}
		if tries == 1 {
			r.logger.Info("Cannot publish a failed message's copy, retrying the publish", fields)
		} else {
			r.logger.Debug("Still cannot publish a failed message's copy", fields)
		}
		if !sleep(delivered, msg, wait) {
			return tries, fmt.Errorf("the subscriber gave the message up while its copy could not be published: %w", err)
		}
	}
}

// sleep waits d. It returns false, at once, when the subscriber gives msg
// up first (see gaveUp); a context that ends for another reason (a
// deadline, an early Ack) does not cut the wait.
func sleep(delivered context.Context, msg *message.Message, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-delivered.Done():
	}
	if gaveUp(delivered, msg) {
		return false
	}
	<-timer.C
	return true
}

func isAcked(msg *message.Message) bool {
	select {
	case <-msg.Acked():
		return true
	default:
		return false
	}
}

// stuckCopies counts, per message, the tries whose copy and stub could not
// be published, so that each Nack comes later than the one before and the
// first alone is logged at Error. It forgets a message once something of it
// is published, and everything when it grows past its bound (a broker-wide
// failure), which only restarts the delays.
type stuckCopies struct {
	mu    sync.Mutex
	tries map[string]int
}

// maxStuck bounds the messages stuckCopies remembers.
const maxStuck = 10_000

func newStuckCopies() *stuckCopies { return &stuckCopies{tries: map[string]int{}} }

// add counts a try of message uuid and returns the count and the delay
// before its Nack.
func (s *stuckCopies) add(uuid string) (int, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.tries) >= maxStuck {
		clear(s.tries)
	}
	s.tries[uuid]++
	n := s.tries[uuid]
	wait := stuckFirst
	for i := 1; i < n && wait < stuckMax; i++ {
		wait *= 2
	}
	return n, min(wait, stuckMax)
}

func (s *stuckCopies) forget(uuid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.tries) > 0 {
		delete(s.tries, uuid)
	}
}
