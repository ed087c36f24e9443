package middleware

import (
	"bytes"
	"context"
	"runtime/debug"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/cenkalti/backoff/v4"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// maxStackBytes bounds the stack trace kept from a panic. The error text
// that goes into metadata is cut further, to tiered.MaxErrorBytes.
const maxStackBytes = 4096

// runHandler runs h, turning a panic into an error that keeps the stack.
func runHandler(h message.HandlerFunc, msg *message.Message) (produced []*message.Message, err error) {
	defer func() {
		if p := recover(); p != nil {
			// Watermill's own type, so that code which looks for
			// Recoverer's error (errors.As) finds this one too.
			produced, err = nil, wmiddleware.RecoveredPanicError{V: p, Stacktrace: panicStack()}
		}
	}()
	produced, err = h(msg)
	if err == nil {
		return produced, nil
	}
	return nil, err
}

// panicStack returns the stack of the goroutine that panicked, from the
// frame that panicked, at most maxStackBytes: the frames of the recovery
// itself (debug.Stack, this deferred function, runtime.gopanic) say
// nothing.
func panicStack() string {
	stack := debug.Stack()
	if i := bytes.Index(stack, []byte("panic(")); i >= 0 {
		// Skip the panic frame: its function line and its file line.
		rest := stack[i:]
		for range 2 {
			if nl := bytes.IndexByte(rest, '\n'); nl >= 0 {
				rest = rest[nl+1:]
			}
		}
		stack = rest
	}
	return tiered.Truncate(string(stack), maxStackBytes)
}

// quick runs the in-process attempts. It stops early on a permanent
// error, on a classifier's DeadLetter, or when delivered (the message's
// context as the middleware received it) ends.
func (r *Retry) quick(h message.HandlerFunc, msg *message.Message, delivered context.Context, err error) ([]*message.Message, error) {
	b := r.policy.Quick.BackOff()
	b.Reset()
	for i := 0; i < r.policy.Quick.Attempts; i++ {
		if r.policy.Decide(tiered.ClassifyParams{Err: err, Message: msg, Attempt: 1}) == tiered.DeadLetter {
			return nil, err
		}
		wait := b.NextBackOff()
		if wait == backoff.Stop {
			return nil, err
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-delivered.Done():
			timer.Stop()
			return nil, err
		}
		r.logger.Trace("Quick attempt", watermill.LogFields{"message_uuid": msg.UUID, "attempt": i + 1})
		// A middleware inside this one (Watermill's Timeout) may have
		// replaced the context and cancelled it when the attempt ended.
		msg.SetContext(delivered)
		var produced []*message.Message
		if produced, err = runHandler(h, msg); err == nil {
			return produced, nil
		}
	}
	return nil, err
}
