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

// DirectEncrypt reports whether the token calls the module's C_Encrypt
// itself (see direct.go), and with off set to true turns that off for
// every token on the module, returning a function that restores it.
func DirectEncrypt(t *Token, off bool) (on bool, restore func()) {
	saved := t.mod.encrypt
	if off {
		t.mod.encrypt = directEncrypt{}
	}
	return saved.fn != nil, func() { t.mod.encrypt = saved }
}
