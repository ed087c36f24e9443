package kafka

import (
	"errors"
	"fmt"
	"sync"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// producer is the backend's one idempotent Sarama producer. The backend's
// publisher publishes through it and waits (synchronous, broker-confirmed);
// consumers hand it tier and dead-letter copies and go on (asynchronous,
// see copy.go). Records queued while a request is in flight go out
// together in the next one, so copies are batched by themselves.
//
// Copies are queued (enqueue) and marshalled and handed to Sarama by one
// goroutine, in the order they were queued, so that the handler's
// goroutine, on which the partition waits, only queues them. Each record
// carries an outcome in ProducerMessage.Metadata; two goroutines read
// Sarama's successes and errors and report them to it. Close stops new
// records and copies, hands Sarama the copies queued, lets it flush what
// it holds, and returns when every goroutine has ended.
type producer struct {
	ap      sarama.AsyncProducer
	marshal marshaler
	logger  watermill.LoggerAdapter

	mu     sync.RWMutex // held for reading while records or copies are queued
	closed bool
	copies chan *copyJob
	worker sync.WaitGroup // the copy goroutine
	loops  sync.WaitGroup // the goroutines reading Sarama's results
}

// copyQueue is the length of the producer's copy queue. A full queue
// makes the handler that publishes a copy wait (each partition has at most
// PartitionWindow copies unresolved anyway).
const copyQueue = 4096

// outcome learns how producing one record ended: err is nil once every
// in-sync replica has it, else classified by [classify].
type outcome interface {
	produced(err error)
}

func newProducer(client sarama.Client, m marshaler, logger watermill.LoggerAdapter) (*producer, error) {
	ap, err := sarama.NewAsyncProducerFromClient(client)
	if err != nil {
		return nil, err
	}
	p := &producer{ap: ap, marshal: m, logger: logger, copies: make(chan *copyJob, copyQueue)}
	p.worker.Add(1)
	go func() {
		defer p.worker.Done()
		for j := range p.copies {
			j.produce()
		}
	}()
	p.loops.Add(2)
	go func() {
		defer p.loops.Done()
		for pm := range ap.Successes() {
			if o, ok := pm.Metadata.(outcome); ok {
				o.produced(nil)
			}
		}
	}()
	go func() {
		defer p.loops.Done()
		for pe := range ap.Errors() {
			err := classify(fmt.Errorf("produce to %s: %w", pe.Msg.Topic, pe.Err))
			if o, ok := pe.Msg.Metadata.(outcome); ok {
				o.produced(err)
			} else {
				logger.Error("Kafka produce failed", err, watermill.LogFields{"topic": pe.Msg.Topic})
			}
		}
	}()
	return p, nil
}

// send hands records to Sarama; it returns [ErrClosed] after Close.
func (p *producer) send(pms ...*sarama.ProducerMessage) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return ErrClosed
	}
	for _, pm := range pms {
		p.ap.Input() <- pm
	}
	return nil
}

// enqueue queues a copy to produce; it returns [ErrClosed] after Close.
// It must not be called from the goroutines that read Sarama's results
// (it may wait for the queue, which waits for Sarama, which waits for
// them).
func (p *producer) enqueue(j *copyJob) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return ErrClosed
	}
	p.copies <- j
	return nil
}

// waiter collects the outcomes of one synchronous publish.
type waiter chan error

func (w waiter) produced(err error) { w <- err }

// publish produces msgs to topic and returns once each was confirmed or
// failed. Errors that producing again cannot fix wrap
// [tiered.ErrUnpublishable].
func (p *producer) publish(topic string, msgs []*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	w := make(waiter, len(msgs))
	pms := make([]*sarama.ProducerMessage, len(msgs))
	for i, msg := range msgs {
		pm, err := p.marshal.Marshal(topic, msg)
		if err != nil {
			return fmt.Errorf("message %s: %w: marshal for %s: %w", msg.UUID, tiered.ErrUnpublishable, topic, err)
		}
		pm.Metadata = w
		pms[i] = pm
	}
	if err := p.send(pms...); err != nil {
		return fmt.Errorf("publish to %s: %w", topic, err)
	}
	var errs []error
	for range pms {
		if err := <-w; err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// close flushes what Sarama holds and stops the producer. Idempotent.
func (p *producer) close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.copies)
	p.mu.Unlock()
	p.worker.Wait() // it hands Sarama what is queued; then Sarama flushes
	p.ap.AsyncClose()
	p.loops.Wait()
	return nil
}
