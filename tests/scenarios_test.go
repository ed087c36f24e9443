package tests_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// quick is the policy of most scenarios: two short tiers, then the
// dead-letter topic.
var quick = tiered.Policy{Delays: []time.Duration{100 * time.Millisecond, 200 * time.Millisecond}, MaxAttempts: 3}

var keys = []string{"k0", "k1", "k2", "k3"}

// Messages that succeed at once are handled once, from the main topic, and
// nothing reaches a tier or dead-letter topic.
func TestRetry_happyPathTouchesNoTier(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, quick).handle("billing", planned)
		r.start()
		var ids []string
		for i := range 20 {
			msg := newMsg(keys[i%len(keys)], 0)
			ids = append(ids, msg.UUID)
			r.publish(msg)
		}
		r.waitOutcomes("billing", ids)
		// Anything put in a tier before now reaches the handler before the
		// sentinel of its key has walked every tier.
		r.flush(keys, "billing")

		calls, dead := r.snapshot()
		for _, id := range ids {
			cs := callsOf(calls, "billing", id)
			require.Len(t, cs, 1, "message %s handled more than once", id)
			require.Equal(t, 0, cs[0].tier, "message %s handled from %s", id, cs[0].topic)
			require.Equal(t, r.topic, cs[0].topic)
			require.NoError(t, cs[0].err)
		}
		for _, d := range dead {
			require.True(t, d.sentinel(), "dead letter %s from a happy path", d.msg.UUID)
		}
		for _, p := range r.backend.published() {
			require.False(t, slices.Contains(ids, p.uuid), "message %s published to %s", p.uuid, p.topic)
		}
	})
}

// A message that fails k times is handled, and succeeds, from tier k,
// having passed through tiers 1..k-1 in order.
func TestRetry_failThenSucceedAtEachTier(t *testing.T) {
	policy := tiered.Policy{Delays: []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond}, MaxAttempts: 4}
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, policy).handle("billing", planned)
		r.start()
		failures := map[string]int{}
		var ids []string
		for k := 0; k <= len(policy.Delays); k++ {
			for i := range 2 {
				msg := newMsg(keys[(k+i)%len(keys)], k)
				failures[msg.UUID] = k
				ids = append(ids, msg.UUID)
				r.publish(msg)
			}
		}
		r.waitOutcomes("billing", ids)
		r.flush(keys, "billing")

		calls, dead := r.snapshot()
		topics := r.handlerTopics("billing")
		for _, id := range ids {
			k := failures[id]
			cs := callsOf(calls, "billing", id)
			want := make([]int, k+1)
			for i := range want {
				want[i] = i
			}
			require.Equal(t, want, firstVisits(cs), "message failing %d times: tiers visited", k)
			var ok []call
			for _, c := range cs {
				if c.err == nil {
					ok = append(ok, c)
				}
			}
			require.NotEmpty(t, ok, "message failing %d times never succeeded", k)
			require.Equal(t, k, ok[0].tier, "message failing %d times succeeded from %s", k, ok[0].topic)
			if k > 0 {
				require.Equal(t, topics.Tiers[k-1], ok[0].topic)
				require.Equal(t, k+1, ok[0].attempt)
			}
		}
		for _, d := range dead {
			require.True(t, d.sentinel(), "message %s dead-lettered", d.msg.UUID)
		}
	})
}

// firstVisits returns the tiers of calls in the order first visited.
func firstVisits(calls []call) []int {
	var out []int
	for _, c := range calls {
		if !slices.Contains(out, c.tier) {
			out = append(out, c.tier)
		}
	}
	return out
}

// A message that always fails walks every tier in order, never early, and
// lands in the dead-letter topic with its UUID, payload, metadata and the
// full retry record.
func TestRetry_exhaustionWalksEveryTierThenDLQ(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, quick).handle("billing", planned)
		r.start()
		msg := newMsg("k1", 1000)
		msg.Metadata.Set("custom", "kept")
		payload := string(msg.Payload)
		r.publish(msg)
		r.waitUntil("the dead letter", func(_ []call, dead []deadLetter) bool { return len(dead) >= 1 })
		r.flush([]string{"k1"}, "billing")

		calls, dead := r.snapshot()
		topics := r.handlerTopics("billing")
		cs := callsOf(calls, "billing", msg.UUID)
		require.Equal(t, []int{0, 1, 2}, tiersOf(cs), "tiers of each attempt")
		for i, c := range cs {
			require.Equal(t, i+1, c.attempt)
			if i > 0 {
				require.False(t, c.at.Before(c.due), "attempt %d handled at %v, before due %v", c.attempt, c.at, c.due)
				require.GreaterOrEqual(t, c.at.Sub(cs[i-1].at), quick.Delays[i-1], "attempt %d came sooner than its tier's delay", c.attempt)
			}
		}

		var mine []deadLetter
		for _, d := range dead {
			if !d.sentinel() {
				mine = append(mine, d)
			}
		}
		require.Len(t, mine, 1)
		d := mine[0]
		require.Equal(t, msg.UUID, d.msg.UUID)
		require.Equal(t, payload, string(d.msg.Payload))
		require.Equal(t, "kept", d.msg.Metadata.Get("custom"))
		require.Equal(t, "k1", d.msg.Metadata.Get(KeyMetadata))

		info, err := tiered.ReadInfo(d.msg.Metadata)
		require.NoError(t, err)
		require.Equal(t, 3, info.Attempt)
		require.Equal(t, 0, info.Tier)
		require.Equal(t, r.topic, info.OriginalTopic)
		require.Equal(t, "billing", info.Handler)
		// Failure times are stamped in milliseconds after the handler
		// returned: the first by attempt 1, the last by attempt 3.
		require.False(t, info.FirstFailure.Before(cs[0].at.Truncate(time.Millisecond)), "first failure %v before the first attempt %v", info.FirstFailure, cs[0].at)
		require.True(t, info.FirstFailure.Before(cs[1].at), "first failure %v not before the second attempt %v", info.FirstFailure, cs[1].at)
		require.False(t, info.LastFailure.Before(cs[2].at.Truncate(time.Millisecond)), "last failure %v before the last attempt %v", info.LastFailure, cs[2].at)
		require.False(t, info.LastFailure.After(d.at), "last failure %v after the dead letter was read %v", info.LastFailure, d.at)
		require.Contains(t, info.LastError, "planned failure 3 of 1000")

		md := d.msg.Metadata
		require.Contains(t, md.Get(wmiddleware.ReasonForPoisonedKey), "no attempts left")
		require.Contains(t, md.Get(wmiddleware.ReasonForPoisonedKey), "planned failure 3 of 1000")
		require.Equal(t, topics.Tiers[1], md.Get(wmiddleware.PoisonedTopicKey))
		require.Equal(t, "billing", md.Get(wmiddleware.PoisonedHandlerKey))
		require.NotEmpty(t, md.Get(wmiddleware.PoisonedSubscriberKey))
	})
}

// A permanent error sends the message to the dead-letter topic from where
// it happened, without another attempt.
func TestRetry_permanentErrorGoesToDLQAtOnce(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, quick).handle("billing", planned)
		r.start()
		onMain := newMsg("k0", 0)
		onMain.Metadata.Set(metaPermanent, "1")
		onTier := newMsg("k1", 1000)
		onTier.Metadata.Set(metaPermanent, "2")
		r.publish(onMain, onTier)
		r.waitOutcomes("billing", []string{onMain.UUID, onTier.UUID})
		r.flush([]string{"k0", "k1"}, "billing")

		calls, dead := r.snapshot()
		topics := r.handlerTopics("billing")
		for _, tc := range []struct {
			msg   *message.Message
			tiers []int
			from  string
		}{
			{onMain, []int{0}, r.topic},
			{onTier, []int{0, 1}, topics.Tiers[0]},
		} {
			require.Equal(t, tc.tiers, tiersOf(callsOf(calls, "billing", tc.msg.UUID)))
			var got []deadLetter
			for _, d := range dead {
				if d.msg.UUID == tc.msg.UUID {
					got = append(got, d)
				}
			}
			require.Len(t, got, 1)
			md := got[0].msg.Metadata
			require.Equal(t, strconv.Itoa(len(tc.tiers)), md.Get(tiered.KeyAttempt))
			require.Equal(t, "0", md.Get(tiered.KeyTier))
			require.Equal(t, tc.from, md.Get(wmiddleware.PoisonedTopicKey))
			require.Contains(t, md.Get(wmiddleware.ReasonForPoisonedKey), "not retried")
			require.Contains(t, md.Get(wmiddleware.ReasonForPoisonedKey), "planned permanent failure")
		}
		for _, p := range r.backend.published() {
			if p.uuid == onMain.UUID {
				require.Equal(t, topics.DLQ, p.topic, "a permanent failure on the main topic was published to %s", p.topic)
			}
			if p.uuid == onTier.UUID {
				require.Contains(t, []string{topics.Tiers[0], topics.DLQ}, p.topic)
			}
		}
	})
}

// No tier message reaches the handler before its due time, nor sooner than
// its tier's delay after the attempt before. Lateness is reported, not
// judged.
func TestRetry_neverEarly(t *testing.T) {
	policy := tiered.Policy{Delays: []time.Duration{200 * time.Millisecond, 400 * time.Millisecond}, MaxAttempts: 3}
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, policy).handle("billing", planned)
		r.start()
		var ids []string
		for i := range 12 {
			msg := newMsg(keys[i%3], 2)
			ids = append(ids, msg.UUID)
			r.publish(msg)
		}
		r.waitOutcomes("billing", ids)

		calls, _ := r.snapshot()
		var late []time.Duration
		for _, id := range ids {
			cs := callsOf(calls, "billing", id)
			for i, c := range cs {
				if c.tier == 0 {
					continue
				}
				require.False(t, c.due.IsZero(), "tier message without a due time")
				require.False(t, c.at.Before(c.due), "handled at %v, %v before due %v", c.at, c.due.Sub(c.at), c.due)
				require.NotZero(t, i)
				prev := cs[i-1]
				require.GreaterOrEqual(t, c.at.Sub(prev.at), policy.Delays[c.tier-1],
					"tier %d attempt came %v after the attempt before, sooner than the delay", c.tier, c.at.Sub(prev.at))
				late = append(late, c.at.Sub(c.due))
			}
		}
		require.Len(t, late, 2*len(ids))
		slices.Sort(late)
		t.Logf("%s: lateness of %d tier deliveries: p50 %v, p90 %v, max %v", b.Name, len(late), late[len(late)/2], late[len(late)*9/10], late[len(late)-1])
	})
}

// While many messages wait in a long tier, new messages on the main topic
// are handled at once: all of them before the first tier message is due.
func TestRetry_mainFlowNotBlockedByTier(t *testing.T) {
	const long = 20 * time.Second
	policy := tiered.Policy{Delays: []time.Duration{long}, MaxAttempts: 2}
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, policy).handle("billing", planned)
		r.start()
		tier := r.handlerTopics("billing").Tiers[0]
		held := map[string]bool{}
		for i := range 50 {
			msg := newMsg(keys[i%3], 1)
			held[msg.UUID] = true
			r.publish(msg)
		}
		var firstDue time.Time
		r.waitUntil("50 messages in the long tier", func([]call, []deadLetter) bool {
			n := 0
			firstDue = time.Time{}
			for _, p := range r.backend.published() {
				if p.topic == tier && p.err == nil && held[p.uuid] {
					n++
					if firstDue.IsZero() || p.due.Before(firstDue) {
						firstDue = p.due
					}
				}
			}
			return n == len(held)
		})

		start := time.Now()
		var fresh []string
		for i := range 20 {
			msg := newMsg(keys[i%3], 0)
			fresh = append(fresh, msg.UUID)
			r.publish(msg)
		}
		// Nothing of the tier may be due before every fresh message was
		// handled.
		r.waitOutcomesBefore(firstDue, "billing", fresh)
		calls, _ := r.snapshot()
		var last time.Time
		for _, id := range fresh {
			for _, c := range callsOf(calls, "billing", id) {
				if c.at.After(last) {
					last = c.at
				}
			}
		}
		t.Logf("%s: 20 fresh messages handled in %v with 50 held in a %v tier", b.Name, last.Sub(start), long)
		if !b.Features.DeliversAfterAck {
			t.Logf("%s hands every message on at once: a blocking retry would go unnoticed here", b.Name)
		}
		require.True(t, last.Before(firstDue), "fresh messages were handled only at %v, after the first tier message was due (%v)", last, firstDue)
		for _, c := range calls {
			require.Equal(t, 0, c.tier, "message %s handled from %s before anything was due", c.uuid, c.topic)
		}
	})
}

// Two handlers on one topic: one always fails, the other sees each message
// exactly once, only from the main topic; retries of the first never reach
// it.
func TestRetry_perHandlerIsolation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, quick).
			handle("ok", func(call) error { return nil }).
			handle("bad", func(c call) error { return fmt.Errorf("bad handler, attempt %d", c.attempt) })
		r.start()
		var ids []string
		for i := range 10 {
			msg := newMsg(keys[i%len(keys)], 0)
			ids = append(ids, msg.UUID)
			r.publish(msg)
		}
		r.waitOutcomes("bad", ids)
		r.waitOutcomes("ok", ids)
		r.flush(keys, "ok", "bad")

		calls, dead := r.snapshot()
		okTopics, badTopics := r.handlerTopics("ok"), r.handlerTopics("bad")
		for _, id := range ids {
			cs := callsOf(calls, "ok", id)
			require.Len(t, cs, 1, "handler ok saw message %s %d times", id, len(cs))
			require.Equal(t, r.topic, cs[0].topic)
			require.Equal(t, []int{0, 1, 2}, tiersOf(callsOf(calls, "bad", id)))
		}
		for _, c := range calls {
			if c.sentinel() {
				continue
			}
			if c.handler == "ok" {
				require.Equal(t, r.topic, c.topic, "handler ok got a message from %s", c.topic)
			} else {
				require.Contains(t, append([]string{r.topic}, badTopics.Tiers...), c.topic)
			}
		}
		for _, d := range dead {
			if d.handler == "ok" {
				require.True(t, d.sentinel(), "handler ok dead-lettered %s", d.msg.UUID)
			}
		}
		for _, p := range r.backend.published() {
			if slices.Contains(ids, p.uuid) {
				require.Contains(t, append(slices.Clone(badTopics.Tiers), badTopics.DLQ), p.topic)
				require.NotContains(t, append(slices.Clone(okTopics.Tiers), okTopics.DLQ), p.topic)
			}
		}
	})
}

// Messages with the same key that fail once come out of the tier in the
// order they were published.
func TestRetry_perKeyOrderInTier(t *testing.T) {
	policy := tiered.Policy{Delays: []time.Duration{150 * time.Millisecond}, MaxAttempts: 2}
	forEachBackend(t, func(t *testing.T, b Backend) {
		if !b.Features.KeepsOrderPerKey {
			t.Skipf("%s does not keep order per key", b.Name)
		}
		r := newRig(t, b, policy).handle("billing", planned)
		r.start()
		published := map[string][]string{}
		var ids []string
		for i := range 40 {
			key := keys[i%len(keys)]
			msg := newMsg(key, 1)
			published[key] = append(published[key], msg.UUID)
			ids = append(ids, msg.UUID)
			r.publish(msg)
		}
		r.waitOutcomes("billing", ids)

		calls, _ := r.snapshot()
		got := map[string][]string{}
		seen := map[string]bool{}
		for _, c := range calls {
			if c.tier == 1 && !seen[c.uuid] {
				seen[c.uuid] = true
				key := c.msg.Metadata.Get(KeyMetadata)
				got[key] = append(got[key], c.uuid)
			}
		}
		for _, key := range keys {
			require.Equal(t, published[key], got[key], "order of key %s out of the tier", key)
		}
	})
}

// A router closed while messages wait in a tier loses none: a new router
// with the same handlers on the same backend handles them.
func TestRetry_restartWhileHeldInTier(t *testing.T) {
	const delay = 2 * time.Second
	policy := tiered.Policy{Delays: []time.Duration{delay}, MaxAttempts: 2}
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, policy).handle("billing", planned)
		r.start()
		tier := r.handlerTopics("billing").Tiers[0]
		var ids []string
		for i := range 20 {
			msg := newMsg(keys[i%len(keys)], 1)
			ids = append(ids, msg.UUID)
			r.publish(msg)
		}
		r.waitUntil("every message in the tier", func([]call, []deadLetter) bool {
			in := map[string]bool{}
			for _, p := range r.backend.published() {
				if p.topic == tier && p.err == nil {
					in[p.uuid] = true
				}
			}
			return len(in) == len(ids)
		})
		r.stop()
		calls, _ := r.snapshot()
		heldAtClose := len(ids)
		for _, id := range ids {
			if o := outcomes("billing", calls, nil)[id]; o.succeeded > 0 {
				heldAtClose--
			}
		}
		t.Logf("%s: %d of %d messages held in the tier when the router closed", b.Name, heldAtClose, len(ids))
		require.Greater(t, heldAtClose, len(ids)/2, "the router closed too late to test anything")

		restarted := time.Now()
		r.start()
		r.waitOutcomes("billing", ids)
		t.Logf("%s: all handled %v after the restart", b.Name, time.Since(restarted))

		calls, dead := r.snapshot()
		for _, d := range dead {
			require.Fail(t, "dead letter", "message %s dead-lettered", d.msg.UUID)
		}
		dups := 0
		for _, id := range ids {
			cs := callsOf(calls, "billing", id)
			var ok []call
			for _, c := range cs {
				if c.err == nil {
					ok = append(ok, c)
				}
			}
			require.NotEmpty(t, ok, "message %s lost", id)
			dups += len(cs) - 2
			for _, c := range ok {
				require.Equal(t, 1, c.tier, "message %s succeeded from %s", id, c.topic)
				require.False(t, c.at.Before(c.due), "handled at %v, before due %v", c.at, c.due)
			}
			if b.Features.PersistentAcrossRestart {
				// Nothing acked by the first router comes back from the
				// main topic: the second one only finishes the tier.
				for _, c := range cs {
					if c.run == 2 {
						require.Equal(t, 1, c.tier, "message %s handled again from %s after the restart", id, c.topic)
					}
				}
			}
		}
		if b.Features.RestartReplaysHistory {
			t.Logf("%s: replays history on restart: %d calls beyond main+tier for %d messages", b.Name, dups, len(ids))
		} else {
			t.Logf("%s: %d duplicate calls", b.Name, dups)
		}
	})
}

// Publishes to tier and dead-letter topics that fail for a while lose
// nothing and run no handler again: the publish is retried until the broker
// takes it, and every message ends succeeded or dead-lettered, as planned.
func TestRetry_retryPublishFailuresLoseNothing(t *testing.T) {
	const faults = 5
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, quick).handle("billing", planned)
		r.backend.failRetryPublishes(faults)
		r.start()
		want := map[string]string{}
		var ids []string
		for i, key := range keys[:3] {
			once := newMsg(key, 1)
			twice := newMsg(key, 2)
			always := newMsg(key, 1000)
			permanent := newMsg(key, 1000) // fails until the permanent error
			permanent.Metadata.Set(metaPermanent, strconv.Itoa(1+i%2))
			for _, m := range []*message.Message{once, twice, always, permanent} {
				ids = append(ids, m.UUID)
				r.publish(m)
			}
			want[once.UUID], want[twice.UUID], want[always.UUID], want[permanent.UUID] = "succeeded", "succeeded", "dead", "dead"
		}
		r.waitOutcomes("billing", ids)
		r.flush(keys[:3], "billing")

		require.Equal(t, faults, r.backend.injectedFailures())
		calls, dead := r.snapshot()
		got := outcomes("billing", calls, dead)
		for _, id := range ids {
			o := got[id]
			require.False(t, o.succeeded > 0 && o.dead > 0, "message %s both succeeded and dead-lettered", id)
			if want[id] == "succeeded" {
				require.Positive(t, o.succeeded, "message %s did not succeed", id)
			} else {
				require.Positive(t, o.dead, "message %s not dead-lettered", id)
			}
		}
		// A failed publish is retried as a publish: it does not make the
		// message come back to the handler. (Counted in total, since a
		// real broker may redeliver a message now and then.)
		n := 0
		for _, c := range calls {
			if !c.sentinel() {
				n++
			}
		}
		minimum := 0
		for _, id := range ids {
			switch want[id] {
			case "succeeded":
				f, _ := strconv.Atoi(callsOf(calls, "billing", id)[0].msg.Metadata.Get(metaFail))
				minimum += f + 1
			default:
				if p := callsOf(calls, "billing", id)[0].msg.Metadata.Get(metaPermanent); p != "" {
					f, _ := strconv.Atoi(p)
					minimum += f
				} else {
					minimum += quick.MaxAttempts
				}
			}
		}
		require.GreaterOrEqual(t, n, minimum, "calls: %d for a plan of %d", n, minimum)
		require.Less(t, n, minimum+faults, "calls: %d for a plan of %d: the %d failed publishes ran the handler again", n, minimum, faults)
		t.Logf("%s: %d calls for a plan of %d with %d failed publishes", b.Name, n, minimum, faults)
	})
}

// 2,000 messages, 30% of them failing a random number of times (some more
// often than the policy allows): each ends exactly once as planned, either
// succeeded or dead-lettered, none lost. Duplicates are reported.
func TestRetry_volume(t *testing.T) {
	const (
		total   = 2000
		seed    = 20260918
		workers = 4
	)
	policy := tiered.Policy{Delays: []time.Duration{50 * time.Millisecond, 100 * time.Millisecond}, MaxAttempts: 3}
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, policy).handle("billing", planned)
		r.start()
		rng := rand.New(rand.NewPCG(seed, 0))
		msgs := make([]*message.Message, total)
		want := map[string]string{}
		ids := make([]string, total)
		failing, exhausting := 0, 0
		for i := range msgs {
			fail := 0
			if rng.IntN(100) < 30 {
				fail = 1 + rng.IntN(policy.MaxAttempts+1) // 1..MaxAttempts+1
				failing++
			}
			msgs[i] = newMsg("k"+strconv.Itoa(i%8), fail)
			ids[i] = msgs[i].UUID
			want[msgs[i].UUID] = "succeeded"
			if fail >= policy.MaxAttempts {
				want[msgs[i].UUID] = "dead"
				exhausting++
			}
		}

		start := time.Now()
		var wg sync.WaitGroup
		errs := make([]error, workers)
		for w := range workers {
			wg.Go(func() {
				for i := w; i < total && errs[w] == nil; i += workers {
					errs[w] = r.tryPublish(msgs[i])
				}
			})
		}
		wg.Wait()
		require.NoError(t, errors.Join(errs...))
		published := time.Since(start)
		r.waitOutcomes("billing", ids)
		done := time.Since(start)

		calls, dead := r.snapshot()
		got := outcomes("billing", calls, dead)
		dupSucceeded, dupDead := 0, 0
		for _, id := range ids {
			o := got[id]
			require.False(t, o.succeeded > 0 && o.dead > 0, "message %s both succeeded and dead-lettered", id)
			if want[id] == "succeeded" {
				require.Positive(t, o.succeeded, "message %s did not succeed", id)
			} else {
				require.Positive(t, o.dead, "message %s not dead-lettered", id)
			}
			dupSucceeded += max(o.succeeded-1, 0)
			dupDead += max(o.dead-1, 0)
		}
		t.Logf("%s: %d messages (%d failing, %d exhausting, seed %d): published in %v, all ended in %v; %d calls; duplicates: %d successes, %d dead letters",
			b.Name, total, failing, exhausting, seed, published.Round(time.Millisecond), done.Round(time.Millisecond), len(calls), dupSucceeded, dupDead)
	})
}

// A message whose copy can never be published (too large for the broker
// once it carries retry metadata) does not stall its partition: a stub
// without payload, with the reason, goes to the dead-letter topic, and the
// messages behind it on the same key are handled.
func TestRetry_unpublishableCopyDoesNotStallThePartition(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, quick).handle("billing", planned)
		r.start()
		big := newMsg(keys[0], 1000)
		big.Metadata.Set(metaTooLarge, "1")
		r.publish(big)
		var behind []string
		for range 5 {
			msg := newMsg(keys[0], 0)
			behind = append(behind, msg.UUID)
			r.publish(msg)
		}
		r.waitOutcomes("billing", append([]string{big.UUID}, behind...))

		calls, dead := r.snapshot()
		require.Len(t, callsOf(calls, "billing", big.UUID), 1, "the handler is not run again for a copy that cannot be published")
		var stub *message.Message
		for _, d := range dead {
			if d.msg.UUID == big.UUID {
				stub = d.msg
			}
		}
		require.NotNil(t, stub)
		require.Empty(t, stub.Payload)
		require.Equal(t, strconv.Itoa(len(big.Payload)), stub.Metadata.Get(tiered.KeyPayloadDropped))
		require.Contains(t, stub.Metadata.Get(wmiddleware.ReasonForPoisonedKey), "cannot be published")
		for _, id := range behind {
			require.Equal(t, 1, outcomes("billing", calls, dead)[id].succeeded, "message %s behind it was handled", id)
		}
	})
}

// A message acked before its handler ends (Watermill's InstantAck) still
// walks its tiers into the dead-letter topic when its handler keeps
// failing: the early Ack ends its context, which must not read as "the
// subscriber gave it up".
func TestRetry_earlyAckKeepsTheFailurePath(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, quick).handle("billing", planned).use(wmiddleware.InstantAck)
		r.start()
		once := newMsg(keys[0], 1)
		always := newMsg(keys[1], 1000)
		r.publish(once, always)
		r.waitOutcomes("billing", []string{once.UUID, always.UUID})

		calls, dead := r.snapshot()
		got := outcomes("billing", calls, dead)
		require.Positive(t, got[once.UUID].succeeded, "failed once, then succeeded from tier 1")
		require.Equal(t, []int{0, 1}, tiersOf(callsOf(calls, "billing", once.UUID))[:2])
		require.Positive(t, got[always.UUID].dead, "dead-lettered after its last tier")
	})
}

// An outer middleware that gives every message a fresh context does not
// restart the attempt count: each handler is bound to its hop when wired,
// so an always-failing message is dead-lettered after MaxAttempts, not
// circled through tier 1.
func TestRetry_freshContextKeepsTheAttemptCount(t *testing.T) {
	fresh := func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			msg.SetContext(context.Background())
			return h(msg)
		}
	}
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, quick).handle("billing", planned).use(fresh)
		r.start()
		always := newMsg(keys[0], 1000)
		r.publish(always)
		r.waitOutcomes("billing", []string{always.UUID})

		got := r.deadLetterOf(always.UUID)
		require.NotNil(t, got)
		require.Equal(t, strconv.Itoa(quick.MaxAttempts), got.Metadata.Get(tiered.KeyAttempt))
		calls, _ := r.snapshot()
		require.Len(t, callsOf(calls, "billing", always.UUID), quick.MaxAttempts, "one call per attempt")
	})
}

// Forged due times cannot stack: five messages in a tier that claim to be
// due in a year hold a legitimate retry behind them for about one tier
// delay in all (the clamp counts from when the broker stored them), not one
// delay each.
func TestRetry_forgedDueTimesCannotStack(t *testing.T) {
	const delay = 2 * time.Second
	policy := tiered.Policy{Delays: []time.Duration{delay}, MaxAttempts: 2}
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, policy).handle("billing", planned)
		r.start()
		tier := r.handlerTopics("billing").Tiers[0]
		year := time.Now().Add(365 * 24 * time.Hour)
		var forged []string
		for range 5 {
			msg := newMsg(keys[0], 0)
			now := time.Now()
			tiered.Info{Attempt: 1, Tier: 1, OriginalTopic: r.topic, Handler: "billing", FirstFailure: now, LastFailure: now}.Write(msg.Metadata)
			msg.Metadata.Set(tiered.KeyDueAt, strconv.FormatInt(year.UnixMilli(), 10))
			forged = append(forged, msg.UUID)
			require.NoError(t, r.backend.Backend.Publisher().Publish(tier, msg))
		}
		legit := newMsg(keys[0], 1)
		r.publish(legit)
		r.waitOutcomes("billing", append([]string{legit.UUID}, forged...))

		calls, _ := r.snapshot()
		cs := callsOf(calls, "billing", legit.UUID)
		require.GreaterOrEqual(t, len(cs), 2)
		late := cs[1].at.Sub(cs[1].due)
		t.Logf("%s: the legitimate retry was handled %v after its due time, behind 5 forged messages", b.Name, late)
		// Clamped from receipt, the five forged messages would hold it
		// five delays; from the broker's append time, about one.
		require.Less(t, late, 3*delay, "the forged due times stacked")
	})
}

// Changing the policy never strands messages: messages waiting in a 10s
// tier when the handler restarts with tiers of 5s and 20s are found in the
// retired tier, handled once, not early, and their next failure follows the
// new tiers. The retired tier's handler stops once it is drained.
func TestRetry_retiredTierIsDrainedAfterAPolicyChange(t *testing.T) {
	old := tiered.Policy{Delays: []time.Duration{10 * time.Second}, MaxAttempts: 3}
	current := tiered.Policy{Delays: []time.Duration{5 * time.Second, 20 * time.Second}, MaxAttempts: 3}
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, old).handle("billing", planned)
		if _, ok := r.backend.Backend.(tiered.Inspector); !ok {
			t.Logf("%s cannot inspect its topics: it cannot find retired tiers", b.Name)
			return
		}
		r.start()
		oldTier := r.handlerTopics("billing").Tiers[0]
		var ids []string
		for i := range 6 {
			msg := newMsg(keys[i%3], 2) // fails on main and in the old tier, then succeeds
			ids = append(ids, msg.UUID)
			r.publish(msg)
		}
		r.waitUntil("every message in the 10s tier", func([]call, []deadLetter) bool {
			n := 0
			for _, p := range r.backend.published() {
				if p.topic == oldTier && p.err == nil {
					n++
				}
			}
			return n == len(ids)
		})
		r.stop()

		r.policy = current
		r.start()
		r.waitOutcomes("billing", ids)

		calls, dead := r.snapshot()
		newTiers := r.handlerTopics("billing").Tiers
		for _, id := range ids {
			cs := callsOf(calls, "billing", id)
			var topics []string
			for _, c := range cs {
				topics = append(topics, c.topic)
				if !c.due.IsZero() {
					require.False(t, c.at.Before(c.due), "message %s handled from %s at %v, before its due time %v", id, c.topic, c.at, c.due)
				}
			}
			require.Equal(t, []string{r.topic, oldTier, newTiers[1]}, topics,
				"message %s: main, the retired 10s tier, then the new tier of attempt 3 (20s)", id)
			require.Zero(t, outcomes("billing", calls, dead)[id].dead)
		}
		for _, c := range calls {
			require.NotEqual(t, 1, c.tier, "nothing went to the new 5s tier, which only attempt 2 reaches")
		}
		r.mu.Lock()
		h := r.handlers["billing"]
		r.mu.Unlock()
		require.Len(t, h.Retired, 1, "one retired tier found")
		select {
		case <-h.Retired[0].Stopped():
		case <-time.After(waitFor):
			t.Fatalf("the retired tier's handler still runs %v after its tier was drained", waitFor)
		}
	})
}
