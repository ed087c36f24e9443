package dlq

import (
	"context"
	"errors"
	"time"
)

// DeadLetterDepth is [Client.Depth] in the form router.Config.DeadLetters
// reads it at each metrics scrape: how many messages topic holds and when
// the broker stored the oldest. A topic that does not exist yet (no
// message was ever dead-lettered there) holds none.
func (c *Client) DeadLetterDepth(ctx context.Context, topic string) (messages int64, oldest time.Time, err error) {
	d, err := c.Depth(ctx, topic)
	if errors.Is(err, ErrUnknownTopic) {
		return 0, time.Time{}, nil
	}
	return d.Messages, d.Oldest, err
}
