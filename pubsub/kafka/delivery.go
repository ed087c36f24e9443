package kafka

import (
	"context"
	"strconv"
	"sync"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/pubsub/kafka/internal/offsets"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// delivery is one consumed record on its way through the router: the
// record, the message made from it, its place in the partition's offset
// tracker, and what [tiered.DeliveryFrom] returns for it. Each message
// handed on has a context of its own, a cancellable child of base, which
// carries the tiered.Delivery and the delivery itself (under deliveryKey)
// so that the backend's publisher recognises a tier or dead-letter copy of
// the message and produces it asynchronously, tied to the record (see
// copy.go). Like watermill-kafka's, it is cancelled once the message is
// acked or nacked, and when the claim lets its messages go (after the
// drain).
type delivery struct {
	info   tiered.Delivery
	base   context.Context    // the claim's context with info and the delivery
	mu     sync.Mutex         // guards cancel once the message is handed on
	cancel context.CancelFunc // the current message's
	c      *claim
	cm     *sarama.ConsumerMessage
	rec    *offsets.Record
	msg    *message.Message
	uuid   string
}

// Every message context is a chain of the standard library's context types
// (a value, a value, a cancel) on the claim's: a lookup of any other key
// (a tracer's span, say) walks it in context.value's loop. A context type
// of our own with a Value method made the walk recurse, one more frame per
// lookup, which overflowed the router's fresh per-message goroutine stack
// (a stack copy, about 3 µs, per traced message).
type deliveryKey struct{}

// deliveryOf returns the delivery whose message (or a copy of it that
// kept its context's values) has ctx, or nil.
func deliveryOf(ctx context.Context) *delivery {
	if ctx == nil {
		return nil
	}
	d, _ := ctx.Value(deliveryKey{}).(*delivery)
	return d
}

// newDelivery makes the delivery of cm, whose message is msg.
func (c *claim) newDelivery(cm *sarama.ConsumerMessage, msg *message.Message) *delivery {
	d := &delivery{c: c, cm: cm}
	if c.appendTime {
		d.info.AppendTime = cm.Timestamp
	}
	d.info.WriteOrigin = d.writeOrigin
	d.base = context.WithValue(tiered.WithDelivery(c.ctx, &d.info), deliveryKey{}, d)
	if msg.UUID == "" {
		// Producers other than Watermill write no UUID header: derive a
		// stable one from where the record was first consumed. Copies
		// keep it on every hop.
		msg.UUID = tiered.OriginUUID("kafka", cm.Topic, strconv.FormatInt(int64(cm.Partition), 10), strconv.FormatInt(cm.Offset, 10))
	}
	d.uuid = msg.UUID
	var ctx context.Context
	ctx, d.cancel = context.WithCancel(d.base)
	msg.SetContext(ctx)
	d.msg = msg
	return d
}

// again returns a new message for the record, with a new context, for a
// delivery after a Nack: the handler's changes to the message before are
// gone.
func (d *delivery) again() *message.Message {
	msg, err := d.c.unmarshal(d.cm)
	if err != nil { // it unmarshalled before: keep what we had
		msg = d.msg.Copy()
	}
	msg.UUID = d.uuid
	ctx, cancel := context.WithCancel(d.base)
	d.mu.Lock()
	d.cancel = cancel
	d.mu.Unlock()
	msg.SetContext(ctx)
	d.msg = msg
	return msg
}

// cancelMessage ends the context of the message handed on last.
func (d *delivery) cancelMessage() {
	d.mu.Lock()
	cancel := d.cancel
	d.mu.Unlock()
	cancel()
}

// writeOrigin writes the record's coordinates into md (tiered.Delivery's
// WriteOrigin).
func (d *delivery) writeOrigin(md message.Metadata) {
	writeOrigin(md, originOf(d.cm))
}

func originOf(cm *sarama.ConsumerMessage) Origin {
	o := Origin{Partition: cm.Partition, Offset: cm.Offset, Key: cm.Key}
	if !cm.Timestamp.IsZero() {
		o.TimestampMs = cm.Timestamp.UnixMilli()
	}
	return o
}

func writeOrigin(md message.Metadata, o Origin) {
	md.Set(tiered.KeyKafkaPartition, strconv.FormatInt(int64(o.Partition), 10))
	md.Set(tiered.KeyKafkaOffset, strconv.FormatInt(o.Offset, 10))
	if o.TimestampMs != 0 {
		md.Set(tiered.KeyKafkaTimestamp, strconv.FormatInt(o.TimestampMs, 10))
	}
	if o.Key != nil {
		md.Set(tiered.KeyKafkaKey, string(o.Key))
	}
}

// Origin is where a message was first consumed: the partition, offset,
// timestamp and key of the record on the handler's own topic.
type Origin struct {
	Partition int32
	Offset    int64
	// Timestamp in Unix milliseconds; 0 when the record had none.
	TimestampMs int64
	// Key is the record key; nil when the record had none.
	Key []byte
}

// ReadOrigin returns where a message was first consumed: from its metadata
// on tier and dead-letter messages, from its context on a message this
// backend consumed from a handler's own topic. It returns false when
// neither records one.
func ReadOrigin(msg *message.Message) (Origin, bool) {
	if _, has := msg.Metadata[tiered.KeyKafkaPartition]; !has {
		if d := deliveryOf(msg.Context()); d != nil && !d.c.s.tier {
			return originOf(d.cm), true
		}
		return Origin{}, false
	}
	p, err1 := strconv.ParseInt(msg.Metadata.Get(tiered.KeyKafkaPartition), 10, 32)
	o, err2 := strconv.ParseInt(msg.Metadata.Get(tiered.KeyKafkaOffset), 10, 64)
	if err1 != nil || err2 != nil {
		return Origin{}, false
	}
	origin := Origin{Partition: int32(p), Offset: o}
	origin.TimestampMs, _ = strconv.ParseInt(msg.Metadata.Get(tiered.KeyKafkaTimestamp), 10, 64)
	if key, ok := msg.Metadata[tiered.KeyKafkaKey]; ok {
		origin.Key = []byte(key)
	}
	return origin, true
}
