package kafka

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/retry-kafka/retry-kafka/pubsub/kafka/internal/offsets"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// Back-off of a copy whose produce failed: 100ms, doubling, at most
// copyBackoffMax, for as long as its claim lives (its session, then the
// drain).
const (
	copyBackoffMin = 100 * time.Millisecond
	copyBackoffMax = 30 * time.Second
	// copyErrorAfter is the number of temporary failures after which a
	// copy's failure is logged at Error (once); before, at Info.
	copyErrorAfter = 5
)

// isCopy reports whether msg, published with d's message's context, is a
// tier or dead-letter copy of d's message: the same UUID, with retry
// metadata.
func (d *delivery) isCopy(msg *message.Message) bool {
	if msg.UUID != d.uuid {
		return false
	}
	_, retry := msg.Metadata[tiered.KeyAttempt]
	return retry
}

// copyAsync starts producing msg, a copy of d's message, to topic, and
// reports whether it did: the record is then unresolved until the copy is
// confirmed, so its offset is not committed before (guarantee 1). It
// reports false when the record's offset may already be committed (an
// early ack long before the copy) or its claim ended; the caller then
// publishes synchronously.
func (d *delivery) copyAsync(topic string, msg *message.Message) bool {
	if d.c.over() || !d.rec.Attach() {
		return false
	}
	d.c.copies(1)
	(&copyJob{c: d.c, rec: d.rec, topic: topic, msg: msg}).queue()
	return true
}

// copyJob produces one copy for a record and resolves the record when the
// broker confirmed it. A temporary failure produces it again after a
// back-off while the claim lives; a copy that can never be published is
// replaced by a dead-letter stub that fits (stub); if the stub fails too,
// the record stays unresolved (its offset uncommitted) and the stub is
// tried again with a growing delay. A job given up when the claim's drain
// expires leaves the record unresolved: it is delivered again, to whoever
// owns the partition next.
type copyJob struct {
	c      *claim
	rec    *offsets.Record
	topic  string
	msg    *message.Message
	pm     *sarama.ProducerMessage
	stub   bool
	tries  int
	logged bool
}

// queue hands the job to the producer's copy goroutine (produce).
func (j *copyJob) queue() {
	if err := j.c.s.b.producer.enqueue(j); err != nil {
		j.giveUp(err)
	}
}

// produce runs on the producer's copy goroutine: it marshals the copy (once)
// and hands it to Sarama.
func (j *copyJob) produce() {
	p := j.c.s.b.producer
	if j.pm == nil {
		pm, err := p.marshal.Marshal(j.topic, j.msg)
		if err != nil {
			j.produced(fmt.Errorf("%w: marshal for %s: %w", tiered.ErrUnpublishable, j.topic, err))
			return
		}
		j.pm = pm
	}
	pm := *j.pm // Sarama keeps state in a ProducerMessage: send a fresh one each time
	pm.Metadata = j
	p.ap.Input() <- &pm
}

func (j *copyJob) fields() watermill.LogFields {
	return j.c.fields.Add(watermill.LogFields{"message_uuid": j.msg.UUID, "copy_topic": j.topic, "offset": j.rec.Offset()})
}

// produced is called by the producer's loops: it must not block on the
// producer.
func (j *copyJob) produced(err error) {
	if err == nil {
		j.rec.Confirm()
		j.c.copies(-1)
		return
	}
	j.tries++
	unpublishable := errors.Is(err, tiered.ErrUnpublishable)
	switch {
	case unpublishable && !j.stub && j.c.s.dlq != "":
		j.c.s.logger.Error("Copy can never be published; sending a dead-letter stub without its payload instead", err, j.fields())
		stub := tiered.DeadLetterStub(j.msg, fmt.Sprintf("the copy for %s cannot be published: %v", j.topic, err))
		if stub.Metadata.Get(wmiddleware.PoisonedTopicKey) == "" {
			stub.Metadata.Set(wmiddleware.PoisonedTopicKey, j.c.topic)
			stub.Metadata.Set(wmiddleware.PoisonedHandlerKey, j.msg.Metadata.Get(tiered.KeyHandler))
		}
		j.msg, j.pm, j.topic, j.stub, j.tries, j.logged = stub, nil, j.c.s.dlq, true, 0, false
		go j.queue() // not on Sarama's result goroutines: queueing may wait
		return
	case unpublishable:
		if !j.logged {
			j.logged = true
			j.c.s.logger.Error("Dead-letter stub cannot be published either; the record stays uncommitted and the stub is tried again with a growing delay", err, j.fields())
		}
	case j.tries == copyErrorAfter && !j.logged:
		j.logged = true
		j.c.s.logger.Error("Copy still cannot be produced; trying again with a growing delay, its record stays uncommitted", err, j.fields())
	case j.tries == 1:
		j.c.s.logger.Info("Copy not produced, trying again", j.fields().Add(watermill.LogFields{"err": err.Error()}))
	}
	delay := copyBackoffMax
	if j.tries < 20 {
		delay = min(copyBackoffMin<<(j.tries-1), copyBackoffMax)
	}
	time.AfterFunc(delay, func() {
		if j.c.isExpired() {
			j.giveUp(err)
			return
		}
		j.queue()
	})
}

// giveUp leaves the record unresolved: it is delivered again.
func (j *copyJob) giveUp(err error) {
	j.c.s.logger.Debug("Copy given up with its partition; the record will be delivered again", j.fields().Add(watermill.LogFields{"err": err.Error()}))
	j.c.copies(-1)
}

// undecodable sends a record that cannot be unmarshalled to the
// subscription's dead-letter topic, raw, with the reason (or, without a
// dead-letter topic, logs and skips it), so that it does not stop the
// partition.
func (c *claim) undecodable(cm *sarama.ConsumerMessage, rec *offsets.Record, cause error) {
	fields := c.fields.Add(watermill.LogFields{"offset": cm.Offset, "err": cause.Error()})
	if c.s.dlq == "" {
		c.s.logger.Error("Kafka record cannot be unmarshalled and there is no dead-letter topic: skipping it", cause, fields)
		rec.Ack()
		return
	}
	c.s.logger.Info("Kafka record cannot be unmarshalled: sending it raw to the dead-letter topic", fields)
	msg := message.NewMessage(tiered.OriginUUID("kafka", cm.Topic, strconv.FormatInt(int64(cm.Partition), 10), strconv.FormatInt(cm.Offset, 10)), cm.Value)
	for _, h := range cm.Headers {
		if k := string(h.Key); k != wkafka.UUIDHeaderKey {
			msg.Metadata.Set(k, string(h.Value))
		}
	}
	tiered.ClearInfo(msg.Metadata)
	tiered.ClearOrigin(msg.Metadata)
	now := time.Now()
	reason := fmt.Sprintf("record at %s/%d/%d cannot be unmarshalled: %v", cm.Topic, cm.Partition, cm.Offset, cause)
	tiered.Info{Attempt: 1, OriginalTopic: cm.Topic, Handler: c.s.params.Handler, FirstFailure: now, LastFailure: now, LastError: reason}.Write(msg.Metadata)
	writeOrigin(msg.Metadata, originOf(cm))
	msg.Metadata.Set(wmiddleware.ReasonForPoisonedKey, tiered.Truncate(reason, tiered.MaxErrorBytes))
	msg.Metadata.Set(wmiddleware.PoisonedTopicKey, cm.Topic)
	msg.Metadata.Set(wmiddleware.PoisonedHandlerKey, c.s.params.Handler)
	rec.Attach()
	c.copies(1)
	(&copyJob{c: c, rec: rec, topic: c.s.dlq, msg: msg}).queue()
	rec.Ack()
}
