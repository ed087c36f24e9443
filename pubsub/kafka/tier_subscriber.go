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
)

// tierSubscriber consumes a tier topic in a consumer group and gives each
// message a context that ends with the group session. The holding
// subscriber above it waits on that context, so when a rebalance ends the
// session the hold ends at once, the message is Nacked, its offset is left
// uncommitted and ConsumeClaim returns: the rebalance never waits for a
// held message. (watermill-kafka's subscriber waits for the Ack without
// watching the session, which holds every rebalance of the group for as
// long as a message is held.)
type tierSubscriber struct {
	brokers []string
	group   string
	config  *sarama.Config
	resend  time.Duration
	logger  watermill.LoggerAdapter

	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

func (s *tierSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	select {
	case <-s.closing:
		return nil, errors.New("subscriber closed")
	default:
	}
	group, err := sarama.NewConsumerGroup(s.brokers, s.group, s.config)
	if err != nil {
		return nil, fmt.Errorf("consumer group %s: %w", s.group, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	fields := watermill.LogFields{"topic": topic, "consumer_group": s.group}
	out := make(chan *message.Message)
	h := &claimHandler{out: out, resend: s.resend, logger: s.logger, fields: fields}

	s.wg.Add(3)
	go func() {
		defer s.wg.Done()
		select {
		case <-s.closing:
		case <-ctx.Done():
		}
		cancel()
	}()
	go func() {
		defer s.wg.Done()
		for err := range group.Errors() {
			s.logger.Error("Tier consumer group error", err, fields)
		}
	}()
	go func() {
		defer s.wg.Done()
		defer close(out)
		defer func() {
			if err := group.Close(); err != nil {
				s.logger.Info("Closing tier consumer group failed", fields.Add(watermill.LogFields{"err": err.Error()}))
			}
		}()
		for ctx.Err() == nil {
			// Consume returns at the end of each session (a rebalance);
			// join again until the subscription ends.
			err := group.Consume(ctx, []string{topic}, h)
			if err == nil || ctx.Err() != nil {
				continue
			}
			if errors.Is(err, sarama.ErrClosedConsumerGroup) {
				return
			}
			s.logger.Error("Tier consume failed, joining again", err, fields)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return out, nil
}

func (s *tierSubscriber) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.wg.Wait()
	})
	return nil
}

type claimHandler struct {
	out    chan<- *message.Message
	resend time.Duration
	logger watermill.LoggerAdapter
	fields watermill.LogFields
}

func (*claimHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (*claimHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h *claimHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for {
		select {
		case rec, ok := <-claim.Messages():
			if !ok || !h.deliver(sess, rec) {
				return nil
			}
		case <-sess.Context().Done():
			return nil
		}
	}
}

// deliver hands rec on until it is acked (then marks its offset) and
// reports false when the session ended first (the offset stays unmarked,
// so the record is delivered again after the rebalance).
func (h *claimHandler) deliver(sess sarama.ConsumerGroupSession, rec *sarama.ConsumerMessage) bool {
	msg, err := wkafka.DefaultMarshaler{}.Unmarshal(rec)
	if err != nil {
		// The default unmarshaler never fails; if a future one does, stop
		// this claim rather than skip the record.
		h.logger.Error("Cannot unmarshal tier record", err, h.fields)
		return false
	}
	ctx, cancel := context.WithCancel(sess.Context())
	defer cancel()
	for {
		msg.SetContext(ctx)
		select {
		case h.out <- msg:
		case <-ctx.Done():
			return false
		}
		select {
		case <-msg.Acked():
			sess.MarkMessage(rec, "")
			return true
		case <-msg.Nacked():
			if ctx.Err() != nil {
				return false
			}
			select {
			case <-time.After(h.resend):
			case <-ctx.Done():
				return false
			}
			msg = msg.Copy()
		case <-ctx.Done():
			return false
		}
	}
}
