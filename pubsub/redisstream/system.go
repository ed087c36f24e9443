package redisstream

// MessagingSystem returns "redis", the messaging.system attribute of the
// retry middleware's spans (it implements tiered.MessagingSystem).
func (b *Backend) MessagingSystem() string { return "redis" }
