package main

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
)

// TestQuickstart runs the demo to its end, redrive included, on the
// embedded broker and on Redis: run fails unless every order reaches the
// outcome the story tells.
func TestQuickstart(t *testing.T) {
	for _, url := range []string{"kafka://embedded", "redis://" + redistest.Addr(t) + "/0"} {
		t.Run(url[:5], func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			require.NoError(t, run(ctx, url, false))
		})
	}
}
