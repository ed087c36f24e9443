package redisstream

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// CheckVersion exposes checkVersion to the black-box tests.
var CheckVersion = checkVersion

// ClaimIdle returns the claim idle time of a subscription to a stream whose
// entries wait delay, with config's defaults applied.
func ClaimIdle(config Config, delay time.Duration) time.Duration {
	config.setDefaults()
	return config.claim(delay).MaxIdleTime
}

// ClientOf returns the client the backend uses.
func ClientOf(b *Backend) redis.UniversalClient { return b.client }

// WaitingInFlight is the Debug log of a subscription that stops while a
// handler works on its message.
const WaitingInFlight = waitingInFlight

// ClientURLParams are the go-redis parameters that Open takes.
var ClientURLParams = clientURLParams
