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
// Watermill's Unmarshaller sees only the fields. They also note each entry
// in the [inHand] of the subscription whose context the read runs in
// (watermill-redisstream reads, claims and acks with the context of the
// subscription), and acks take it out.
type streamClient struct {
	redis.UniversalClient
}

// Close does not close the shared client.
func (streamClient) Close() error { return nil }

// XReadGroup reads like the wrapped client, then tags every entry with its
// ID and notes it in hand.
func (c streamClient) XReadGroup(ctx context.Context, a *redis.XReadGroupArgs) *redis.XStreamSliceCmd {
	cmd := c.UniversalClient.XReadGroup(ctx, a)
	for _, xs := range cmd.Val() {
		tagIDs(xs.Messages)
		inHandFrom(ctx).add(xs.Stream, xs.Messages)
	}
	return cmd
}

// XClaim claims like the wrapped client, then tags every entry with its ID
// and notes it in hand.
func (c streamClient) XClaim(ctx context.Context, a *redis.XClaimArgs) *redis.XMessageSliceCmd {
	cmd := c.UniversalClient.XClaim(ctx, a)
	tagIDs(cmd.Val())
	inHandFrom(ctx).add(a.Stream, cmd.Val())
	return cmd
}

// XAck acks like the wrapped client; once Redis took the ack, the entries
// are no longer in hand.
func (c streamClient) XAck(ctx context.Context, stream, group string, ids ...string) *redis.IntCmd {
	cmd := c.UniversalClient.XAck(ctx, stream, group, ids...)
	if cmd.Err() == nil {
		inHandFrom(ctx).remove(stream, ids...)
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

// inHand is the set of entries of one stream that one subscription's
// consumer read or claimed and has not acked: the entry in its handler or
// held until due, and those its watermill-redisstream subscriber read
// ahead. The subscription refreshes its claim on each of them (see
// [loop.refresh]), so that no other consumer takes an entry this consumer
// still has. Entries pending on the consumer that it does not have in hand
// (a reply lost on the network, a subscription that ended: each
// subscription has a set of its own) are not refreshed, and come back after
// MaxIdleTime. The nil *inHand keeps nothing.
type inHand struct {
	stream string
	mu     sync.Mutex
	ids    map[string]struct{}
}

func newInHand(stream string) *inHand {
	return &inHand{stream: stream, ids: map[string]struct{}{}}
}

type inHandKey struct{}

// withInHand returns ctx carrying h, for the reads of a subscription.
func withInHand(ctx context.Context, h *inHand) context.Context {
	return context.WithValue(ctx, inHandKey{}, h)
}

// inHandFrom returns the set in ctx, or nil.
func inHandFrom(ctx context.Context) *inHand {
	h, _ := ctx.Value(inHandKey{}).(*inHand)
	return h
}

func (h *inHand) add(stream string, msgs []redis.XMessage) {
	if h == nil || stream != h.stream || len(msgs) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, m := range msgs {
		h.ids[m.ID] = struct{}{}
	}
}

func (h *inHand) remove(stream string, ids ...string) {
	if h == nil || stream != h.stream {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, id := range ids {
		delete(h.ids, id)
	}
}

// list returns the entries in hand.
func (h *inHand) list() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, 0, len(h.ids))
	for id := range h.ids {
		out = append(out, id)
	}
	return out
}

// drop removes the entries of listed that are not in still: Redis no
// longer has them pending on this consumer (acked, or trimmed away).
func (h *inHand) drop(listed, still []string) {
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
	h.remove(h.stream, gone...)
}
