package tiered_test

import (
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// recordingPublisher keeps what it was asked to publish.
type recordingPublisher struct {
	mu     sync.Mutex
	topics []string
	msgs   []*message.Message
	err    error
	closed bool
}

func (p *recordingPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	for _, m := range msgs {
		p.topics = append(p.topics, topic)
		p.msgs = append(p.msgs, m)
	}
	return nil
}

func (p *recordingPublisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	return nil
}

func TestPublisher_stampsDueTimeFromDelayFor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		inner := &recordingPublisher{}
		pub, err := tiered.NewPublisher(inner, nil)
		require.NoError(t, err)

		msg := message.NewMessage("m1", []byte("payload"))
		delay.Message(msg, delay.For(10*time.Second))
		time.Sleep(3 * time.Second) // the delay counts from the publish, not from delay.For

		require.NoError(t, pub.Publish("orders.billing.retry.10s", msg))

		due := time.Now().Add(10 * time.Second)
		require.Equal(t, []string{"orders.billing.retry.10s"}, inner.topics)
		require.Same(t, msg, inner.msgs[0])
		require.Equal(t, ms(due), msg.Metadata.Get(tiered.KeyDueAt))
		require.Equal(t, due.UTC().Format(time.RFC3339), msg.Metadata.Get(delay.DelayedUntilKey))

		got, ok, err := tiered.DueAt(msg.Metadata)
		require.NoError(t, err)
		require.True(t, ok)
		require.True(t, due.Equal(got))
	})
}

func TestPublisher_passesMessagesWithoutDelayUntouched(t *testing.T) {
	inner := &recordingPublisher{}
	pub, err := tiered.NewPublisher(inner, nil)
	require.NoError(t, err)

	a := message.NewMessage("a", nil)
	a.Metadata.Set("tenant", "acme")
	b := message.NewMessage("b", nil)
	delay.Message(b, delay.For(time.Minute))

	require.NoError(t, pub.Publish("t", a, b))

	require.Equal(t, message.Metadata{"tenant": "acme"}, a.Metadata, "no delay asked: nothing stamped")
	require.NotEmpty(t, b.Metadata.Get(tiered.KeyDueAt))
	require.Len(t, inner.msgs, 2)
}

func TestPublisher_rejectsBadDelay(t *testing.T) {
	tests := []struct {
		name     string
		delayFor string
		wantText string
	}{
		{"not a duration", "soon", `_watermill_delayed_for is "soon", not a non-negative Go duration`},
		{"negative", "-5s", `"-5s"`},
		{"empty", "", `_watermill_delayed_for is ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inner := &recordingPublisher{}
			pub, err := tiered.NewPublisher(inner, nil)
			require.NoError(t, err)
			good := message.NewMessage("good", nil)
			delay.Message(good, delay.For(time.Second))
			bad := message.NewMessage("bad", nil)
			bad.Metadata.Set(delay.DelayedForKey, tt.delayFor)

			err = pub.Publish("t", good, bad)

			require.ErrorIs(t, err, tiered.ErrInvalidMetadata)
			require.ErrorContains(t, err, tt.wantText)
			require.ErrorContains(t, err, "message bad")
			require.Empty(t, inner.msgs, "nothing is published when one message is bad")
		})
	}
}

func TestPublisher_returnsTheWrappedPublishersError(t *testing.T) {
	brokerDown := errors.New("broker down")
	pub, err := tiered.NewPublisher(&recordingPublisher{err: brokerDown}, nil)
	require.NoError(t, err)

	require.ErrorIs(t, pub.Publish("t", message.NewMessage("m", nil)), brokerDown)
}

func TestPublisher_closeClosesTheWrappedPublisher(t *testing.T) {
	inner := &recordingPublisher{}
	var dec message.PublisherDecorator = tiered.PublisherDecorator(nil)
	pub, err := dec(inner)
	require.NoError(t, err)

	require.NoError(t, pub.Close())
	require.True(t, inner.closed)
}

func TestNewPublisher_rejectsNil(t *testing.T) {
	pub, err := tiered.NewPublisher(nil, nil)
	require.Nil(t, pub)
	require.ErrorContains(t, err, "invalid config: nil publisher")

	_, err = tiered.PublisherDecorator(nil)(nil)
	require.ErrorContains(t, err, "nil publisher")
}
