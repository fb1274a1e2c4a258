package hsm

// Test hooks into the token's internals.

// Finds returns how many C_FindObjects searches the token has run.
func Finds(t *Token) int64 { return t.finds.Load() }

// Generation returns the token's session generation.
func Generation(t *Token) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.gen
}

// CachedKeys returns how many keys have cached handles.
func CachedKeys(t *Token) int { return t.keys.len() }
