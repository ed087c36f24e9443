package pubsub

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/retry-kafka/retry-kafka/internal/backendurl"
	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
	"github.com/retry-kafka/retry-kafka/pubsub/memory"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// ErrUnknownScheme is returned by [Open] for a URL whose scheme names no
// backend.
var ErrUnknownScheme = errors.New("unknown backend scheme")

// Open opens the backend that rawURL names (see the package doc). The
// caller closes it.
func Open(ctx context.Context, rawURL string, logger watermill.LoggerAdapter) (tiered.Backend, error) {
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	if strings.TrimSpace(rawURL) == "" {
		return nil, errors.New("empty backend URL: use mem://, kafka://host:9092 or redis://host:6379/0")
	}
	scheme, _, ok := strings.Cut(rawURL, "://")
	if !ok {
		return nil, fmt.Errorf("backend URL %q has no scheme: use mem://, kafka://host:9092 or redis://host:6379/0", backendurl.Redact(rawURL))
	}
	switch strings.ToLower(scheme) {
	case "mem", "memory":
		b, err := memory.Open(rawURL, logger)
		if err != nil {
			return nil, err
		}
		return b, nil
	case "kafka":
		b, err := kafka.Open(ctx, rawURL, logger)
		if err != nil {
			return nil, err
		}
		return b, nil
	case "redis", "rediss", "unix":
		b, err := redisstream.Open(ctx, rawURL, logger)
		if err != nil {
			return nil, err
		}
		return b, nil
	default:
		return nil, fmt.Errorf("%w %q in %q: use mem://, kafka://host:9092 or redis://host:6379/0", ErrUnknownScheme, scheme, backendurl.Redact(rawURL))
	}
}
