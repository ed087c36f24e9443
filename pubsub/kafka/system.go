package kafka

// MessagingSystem returns "kafka", the messaging.system attribute of the
// retry middleware's spans (it implements tiered.MessagingSystem).
func (b *Backend) MessagingSystem() string { return "kafka" }
