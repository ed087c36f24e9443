package redisstream

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// entryIDField is the field under which [streamClient] passes an entry's
// ID to the unmarshaller. No producer writes it: a field of that name in an
// entry is overwritten.
const entryIDField = "\x00retry_redis_entry_id"

// streamClient is the client handed to watermill-redisstream. Its Close does
// nothing, because watermill-redisstream closes the client it was given when
// a publisher or subscriber closes, and the client is shared. Its reads add
// each entry's ID to the entry's fields, where [unmarshaller] finds it:
// Watermill's Unmarshaller sees only the fields. A subscriber's client also
// keeps, in inHand, the entries its consumer read or claimed and has not
// acked yet.
type streamClient struct {
	redis.UniversalClient
	inHand *inHand // nil for the publisher
}

// Close does not close the shared client.
func (streamClient) Close() error { return nil }

// XReadGroup reads like the wrapped client, then tags every entry with its
// ID and notes it in hand.
func (c streamClient) XReadGroup(ctx context.Context, a *redis.XReadGroupArgs) *redis.XStreamSliceCmd {
	cmd := c.UniversalClient.XReadGroup(ctx, a)
	for _, xs := range cmd.Val() {
		tagIDs(xs.Messages)
		c.inHand.add(xs.Stream, xs.Messages)
	}
	return cmd
}

// XClaim claims like the wrapped client, then tags every entry with its ID
// and notes it in hand.
func (c streamClient) XClaim(ctx context.Context, a *redis.XClaimArgs) *redis.XMessageSliceCmd {
	cmd := c.UniversalClient.XClaim(ctx, a)
	tagIDs(cmd.Val())
	c.inHand.add(a.Stream, cmd.Val())
	return cmd
}

// XAck acks like the wrapped client; once Redis took the ack, the entries
// are no longer in hand.
func (c streamClient) XAck(ctx context.Context, stream, group string, ids ...string) *redis.IntCmd {
	cmd := c.UniversalClient.XAck(ctx, stream, group, ids...)
	if cmd.Err() == nil {
		c.inHand.remove(stream, ids...)
	}
	return cmd
}

func tagIDs(msgs []redis.XMessage) {
	for i := range msgs {
		if msgs[i].Values == nil {
			msgs[i].Values = map[string]any{}
		}
		msgs[i].Values[entryIDField] = msgs[i].ID
	}
}

// inHand is the set of entries, per stream, that one consumer read or
// claimed and has not acked: the entry in its handler or held until due,
// and those its watermill-redisstream subscriber read ahead. The
// subscription refreshes its claim on each of them (see [loop.refresh]), so
// that no other consumer takes an entry this consumer still has. Entries
// pending on the consumer that it does not have in hand (a reply lost on
// the network, a subscription that ended) are not refreshed, and come back
// after MaxIdleTime. The nil *inHand keeps nothing.
type inHand struct {
	mu  sync.Mutex
	ids map[string]map[string]struct{} // stream → entry IDs
}

func newInHand() *inHand { return &inHand{ids: map[string]map[string]struct{}{}} }

func (h *inHand) add(stream string, msgs []redis.XMessage) {
	if h == nil || len(msgs) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	set := h.ids[stream]
	if set == nil {
		set = map[string]struct{}{}
		h.ids[stream] = set
	}
	for _, m := range msgs {
		set[m.ID] = struct{}{}
	}
}

func (h *inHand) remove(stream string, ids ...string) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	set := h.ids[stream]
	for _, id := range ids {
		delete(set, id)
	}
	if len(set) == 0 {
		delete(h.ids, stream)
	}
}

// list returns the entries in hand on stream.
func (h *inHand) list(stream string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, 0, len(h.ids[stream]))
	for id := range h.ids[stream] {
		out = append(out, id)
	}
	return out
}

// forget drops every entry of stream: its subscription ended, and what
// stays pending is claimed after MaxIdleTime.
func (h *inHand) forget(stream string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.ids, stream)
}

// drop removes the entries of listed that are not in still: Redis no
// longer has them pending on this consumer (acked, or trimmed away).
func (h *inHand) drop(stream string, listed, still []string) {
	keep := make(map[string]struct{}, len(still))
	for _, id := range still {
		keep[id] = struct{}{}
	}
	var gone []string
	for _, id := range listed {
		if _, ok := keep[id]; !ok {
			gone = append(gone, id)
		}
	}
	h.remove(stream, gone...)
}
