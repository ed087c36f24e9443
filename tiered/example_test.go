package tiered_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// The topics of one handler: a tier per delay that attempts can reach, and
// the dead-letter topic. With six attempts and three delays, the last tier
// repeats.
func ExamplePolicy_Topics() {
	policy := tiered.Policy{
		Delays:      []time.Duration{10 * time.Second, time.Minute, 5 * time.Minute},
		MaxAttempts: 6,
	}
	topics, err := policy.Topics("orders", "billing", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	for i, name := range topics.Tiers {
		fmt.Printf("tier %d: %s (waits %v)\n", i+1, name, topics.Delays[i])
	}
	fmt.Println("dead letters:", topics.DLQ)
	for attempt := 1; attempt <= policy.MaxAttempts; attempt++ {
		if tier, ok := policy.TierFor(attempt); ok {
			fmt.Printf("attempt %d fails -> %s\n", attempt, topics.Tiers[tier-1])
		} else {
			fmt.Printf("attempt %d fails -> %s\n", attempt, topics.DLQ)
		}
	}
	// Output:
	// tier 1: orders.billing.retry.10s (waits 10s)
	// tier 2: orders.billing.retry.1m (waits 1m0s)
	// tier 3: orders.billing.retry.5m (waits 5m0s)
	// dead letters: orders.billing.dlq
	// attempt 1 fails -> orders.billing.retry.10s
	// attempt 2 fails -> orders.billing.retry.1m
	// attempt 3 fails -> orders.billing.retry.5m
	// attempt 4 fails -> orders.billing.retry.5m
	// attempt 5 fails -> orders.billing.retry.5m
	// attempt 6 fails -> orders.billing.dlq
}

var errCardDeclined = errors.New("card declined")

// A handler returns a permanent error, directly or wrapped, to send its
// message straight to the dead-letter topic. backoff.Permanent works too.
func ExamplePermanent() {
	policy := tiered.Policy{Delays: []time.Duration{10 * time.Second}}
	for _, err := range []error{
		errors.New("card service unavailable"),
		tiered.Permanent(errCardDeclined),
		fmt.Errorf("charge order 42: %w", tiered.Permanent(errCardDeclined)),
		backoff.Permanent(errCardDeclined),
	} {
		decision := policy.Decide(tiered.ClassifyParams{Err: err, Attempt: 1})
		fmt.Printf("%-40q permanent=%-5v %v, is card declined: %v\n",
			err.Error(), tiered.IsPermanent(err), decision, errors.Is(err, errCardDeclined))
	}
	// Output:
	// "card service unavailable"               permanent=false retry, is card declined: false
	// "card declined"                          permanent=true  dead-letter, is card declined: true
	// "charge order 42: card declined"         permanent=true  dead-letter, is card declined: true
	// "card declined"                          permanent=true  dead-letter, is card declined: true
}

// Tier delays from an exponential back-off. Set MaxElapsedTime (it
// defaults to 15 minutes) and RandomizationFactor 0 for fixed topic names.
func ExampleDelaysFromBackOff() {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 10 * time.Second
	b.Multiplier = 3
	b.RandomizationFactor = 0
	b.MaxInterval = 10 * time.Minute
	b.MaxElapsedTime = time.Hour

	delays, err := tiered.DelaysFromBackOff(b, 5)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, d := range delays {
		fmt.Println(tiered.FormatDelay(d))
	}
	// Output:
	// 10s
	// 30s
	// 90s
	// 270s
	// 10m
}
