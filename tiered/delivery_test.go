package tiered_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/tiered"
)

func TestOriginUUID_isStableAndDistinct(t *testing.T) {
	a := tiered.OriginUUID("kafka", "orders", "3", "1042")
	require.Equal(t, a, tiered.OriginUUID("kafka", "orders", "3", "1042"), "same coordinates, same UUID")
	parsed, err := uuid.Parse(a)
	require.NoError(t, err)
	require.Equal(t, uuid.Version(5), parsed.Version())

	for _, other := range []string{
		tiered.OriginUUID("kafka", "orders", "3", "1043"),
		tiered.OriginUUID("kafka", "orders", "31", "042"), // no ambiguity from joining
		tiered.OriginUUID("redis", "orders", "3", "1042"),
		tiered.OriginUUID("kafka", "orders.x", "3", "1042"),
	} {
		require.NotEqual(t, a, other)
	}
}

func TestDelivery_roundTripsThroughTheContext(t *testing.T) {
	require.Nil(t, tiered.DeliveryFrom(context.Background()))
	d := &tiered.Delivery{AppendTime: time.UnixMilli(1700000000000)}
	got := tiered.DeliveryFrom(tiered.WithDelivery(context.Background(), d))
	require.Same(t, d, got)
}
