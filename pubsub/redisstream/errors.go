package redisstream

import "errors"

// Sentinel errors. Compare with [errors.Is].
var (
	// ErrClosed is returned by the publisher, [Backend.Subscriber] and
	// [Backend.Prepare] after [Backend.Close], and by Subscribe after the
	// subscriber's Close.
	ErrClosed = errors.New("redis stream backend closed")

	// ErrUnsupportedServer is wrapped by the error of [New] and [Open]
	// when the Redis server is older than 6.2 or its version cannot be
	// read.
	ErrUnsupportedServer = errors.New("unsupported Redis server")
)
