package tests_test

import (
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	wmtests "github.com/ThreeDotsLabs/watermill/pubsub/tests"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// suiteDelay is the tier delay of the Watermill suite's pub/subs: every
// message the suite publishes asks for it (Watermill's delay publisher),
// gets its due time from tiered.Publisher, and is held by tiered.Subscriber
// until then, on a tier subscription of the backend.
const suiteDelay = 20 * time.Millisecond

// Watermill's universal pub/sub suite over the two decorators, as the
// router wires a tier: delay.NewPublisher (Watermill's) over
// tiered.NewPublisher over the backend's publisher, and tiered.NewSubscriber
// over a tier subscription (SubscribeParams.Delay > 0) of the backend. What
// each backend lets the suite expect is its Features.Watermill.
func TestWatermillSuite(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			backendFor := sharedBackend(t, b)
			wmtests.TestPubSub(t, b.Features.Watermill,
				func(t *testing.T) (message.Publisher, message.Subscriber) {
					// Every subscriber of one test is in the same group.
					return suitePubSub(t, backendFor(t), groupFor(t, ""))
				},
				func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
					return suitePubSub(t, backendFor(t), group)
				},
			)
		})
	}
}

// sharedBackend returns what gives each of the suite's tests its backend:
// one backend for all of them, or, for a backend that needs a single
// instance (memory), one per test, shared by every constructor call of
// that test.
func sharedBackend(t *testing.T, b Backend) func(t *testing.T) tiered.Backend {
	if !b.Features.Watermill.RequireSingleInstance {
		shared := b.New(t)
		return func(*testing.T) tiered.Backend { return shared }
	}
	var each perTest[tiered.Backend]
	return func(t *testing.T) tiered.Backend {
		return each.get(t, func() tiered.Backend { return b.New(t) })
	}
}

// suitePubSub returns the decorated publisher and a decorated tier
// subscriber in group.
func suitePubSub(t *testing.T, backend tiered.Backend, group string) (message.Publisher, message.Subscriber) {
	stamping, err := tiered.NewPublisher(backend.Publisher(), nil)
	require.NoError(t, err)
	pub, err := delay.NewPublisher(stamping, delay.PublisherConfig{
		DefaultDelayGenerator: func(delay.DefaultDelayGeneratorParams) (delay.Delay, error) {
			return delay.For(suiteDelay), nil
		},
	})
	require.NoError(t, err)
	sub, err := backend.Subscriber(tiered.SubscribeParams{Group: group, Delay: suiteDelay})
	require.NoError(t, err)
	held, err := tiered.NewSubscriber(sub, tiered.SubscriberConfig{MaxDelay: suiteDelay}, nil)
	require.NoError(t, err)
	return pub, held
}
