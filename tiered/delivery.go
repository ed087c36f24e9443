package tiered

import (
	"context"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
)

// Delivery is what a backend's subscriber knows about one message it
// consumed and that no Watermill message carries: when the broker stored
// it, and where it sits on the broker. The subscriber puts it in the
// message's context ([WithDelivery]); the holding [Subscriber] and the retry
// middleware read it ([DeliveryFrom]).
//
// It travels in the context, not in metadata, so the happy path writes no
// metadata: the coordinates are written into a copy's metadata only when a
// message fails. A middleware that gives the message a context that does not
// derive from the subscriber's loses it; the clamp then falls back to the
// receipt time, and the dead-letter copy to no coordinates.
type Delivery struct {
	// AppendTime is when the broker stored the message, on the broker's
	// clock: a Redis stream entry ID's time, or the record timestamp of a
	// Kafka topic with message.timestamp.type=LogAppendTime. The holding
	// subscriber clamps a due time to AppendTime + the tier's delay, so
	// that due times a producer forged cannot stack up behind each other.
	// Zero when the broker does not vouch for one.
	AppendTime time.Time

	// WriteOrigin writes into md where the message was consumed (Kafka
	// partition, offset, timestamp and key; Redis entry ID), with the keys
	// of the metadata contract. The retry middleware calls it on the first
	// hop's copy, so the dead-letter message can point at the original.
	// Nil when the backend records no origin.
	WriteOrigin func(md message.Metadata)
}

type deliveryKey struct{}

// WithDelivery returns ctx carrying d. Backends call it for every message
// they consume.
func WithDelivery(ctx context.Context, d *Delivery) context.Context {
	return context.WithValue(ctx, deliveryKey{}, d)
}

// DeliveryFrom returns the [Delivery] a backend put in ctx, or nil.
func DeliveryFrom(ctx context.Context) *Delivery {
	d, _ := ctx.Value(deliveryKey{}).(*Delivery)
	return d
}

// originNamespace is the UUID namespace of [OriginUUID] (a random v4 UUID,
// fixed forever: changing it would change every derived UUID).
var originNamespace = uuid.MustParse("6d1f0f5e-7a43-4b8e-9c56-3f2a8b9e41d7")

// OriginUUID derives a stable message UUID from where a message was first
// consumed, for records that carry no Watermill UUID (written by producers
// that are not Watermill). The same coordinates always give the same UUID,
// so every hop and every redelivery of the record has one identity:
//
//	OriginUUID("kafka", "orders", "3", "1042")      // topic, partition, offset
//	OriginUUID("redis", "orders", "1700000000000-0") // stream, entry ID
//
// It is a name-based (SHA-1, version 5) UUID.
func OriginUUID(system string, coordinates ...string) string {
	name := system
	for _, c := range coordinates {
		name += "\x00" + c
	}
	return uuid.NewSHA1(originNamespace, []byte(name)).String()
}
