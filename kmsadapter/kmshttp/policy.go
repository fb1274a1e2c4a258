package kmshttp

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Policy is a parsed key policy. Parsing keeps what evaluation uses:
// Effect, Principal/NotPrincipal, Action/NotAction, Resource/NotResource
// and Condition.
type Policy struct {
	Statements []Statement
}

// Statement is one statement of a key policy.
type Statement struct {
	Sid          string
	Deny         bool
	Principals   []string // "*", an account ID, or an ARN; nil with NotPrincipal
	NotPrincipal []string
	Actions      []string // lower case patterns
	NotActions   []string
	Resources    []string
	NotResources []string
	Conditions   []Condition
}

// Condition is one operator and key of a Condition block, e.g.
// "StringEquals": {"kms:EncryptionContext:dept": ["a", "b"]}.
type Condition struct {
	Op       string // base operator: StringEquals, StringLike, ...
	Set      string // "", "ForAnyValue" or "ForAllValues"
	IfExists bool
	Key      string // lower case
	Values   []string
}

var knownOps = map[string]bool{
	"StringEquals": true, "StringNotEquals": true,
	"StringEqualsIgnoreCase": true, "StringNotEqualsIgnoreCase": true,
	"StringLike": true, "StringNotLike": true,
	"Bool": true, "Null": true,
	"ArnEquals": true, "ArnLike": true, "ArnNotEquals": true, "ArnNotLike": true,
}

// knownCondKeys are the condition keys (lower case) a request to this
// server can carry; kms:EncryptionContext:<key> is matched by prefix.
var knownCondKeys = map[string]bool{
	"kms:calleraccount": true, "aws:principalarn": true, "aws:principalaccount": true,
	"kms:encryptioncontextkeys": true, "kms:encryptionalgorithm": true, "kms:datakeypairspec": true,
	"kms:signingalgorithm": true, "kms:messagetype": true, "kms:macalgorithm": true,
}

// knownElements are the statement elements this server evaluates.
var knownElements = map[string]bool{
	"Sid": true, "Effect": true, "Principal": true, "NotPrincipal": true, "Action": true, "NotAction": true,
	"Resource": true, "NotResource": true, "Condition": true,
}

// ParsePolicy parses a key policy document. It rejects what it would not
// evaluate faithfully: an unknown Effect, condition operator, condition
// key or element (a misspelt "Condtion" would otherwise turn a
// conditional Allow into an unconditional one, and a Deny on a key this
// server never supplies would never apply), a statement without Action
// or Principal.
func ParsePolicy(doc string) (*Policy, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal([]byte(doc), &top); err != nil {
		return nil, fmt.Errorf("the policy is not a JSON object: %w", err)
	}
	var raw struct {
		Version   string
		Statement json.RawMessage
	}
	for k, v := range top {
		switch k {
		case "Version":
			if err := json.Unmarshal(v, &raw.Version); err != nil {
				return nil, fmt.Errorf("Version: %w", err)
			}
		case "Statement":
			raw.Statement = v
		case "Id":
		default:
			return nil, fmt.Errorf("unknown policy element %q", k)
		}
	}
	var stmts []map[string]json.RawMessage
	if len(raw.Statement) == 0 {
		return nil, errors.New("the policy has no Statement")
	}
	if raw.Statement[0] == '{' {
		var one map[string]json.RawMessage
		if err := json.Unmarshal(raw.Statement, &one); err != nil {
			return nil, fmt.Errorf("Statement: %w", err)
		}
		stmts = append(stmts, one)
	} else if err := json.Unmarshal(raw.Statement, &stmts); err != nil {
		return nil, fmt.Errorf("Statement must be an object or an array of objects: %w", err)
	}
	if len(stmts) == 0 {
		return nil, errors.New("the policy has no statement")
	}
	p := &Policy{}
	for i, m := range stmts {
		st, err := parseStatement(m)
		if err != nil {
			return nil, fmt.Errorf("statement %d: %w", i, err)
		}
		p.Statements = append(p.Statements, st)
	}
	return p, nil
}

func parseStatement(m map[string]json.RawMessage) (Statement, error) {
	var st Statement
	for k := range m {
		if !knownElements[k] {
			return st, fmt.Errorf("unknown or unsupported element %q", k)
		}
	}
	if v, ok := m["Sid"]; ok {
		_ = json.Unmarshal(v, &st.Sid)
	}
	var effect string
	if err := json.Unmarshal(m["Effect"], &effect); err != nil {
		return st, errors.New("Effect must be \"Allow\" or \"Deny\"")
	}
	switch effect {
	case "Allow":
	case "Deny":
		st.Deny = true
	default:
		return st, fmt.Errorf("Effect %q must be \"Allow\" or \"Deny\"", effect)
	}
	var err error
	_, hasP := m["Principal"]
	_, hasNP := m["NotPrincipal"]
	switch {
	case hasP && hasNP:
		return st, errors.New("both Principal and NotPrincipal")
	case hasP:
		if st.Principals, err = parsePrincipal(m["Principal"]); err != nil {
			return st, fmt.Errorf("Principal: %w", err)
		}
	case hasNP:
		if st.NotPrincipal, err = parsePrincipal(m["NotPrincipal"]); err != nil {
			return st, fmt.Errorf("NotPrincipal: %w", err)
		}
	default:
		return st, errors.New("a key policy statement needs a Principal")
	}
	if st.Actions, st.NotActions, err = either(m, "Action", "NotAction", true); err != nil {
		return st, err
	}
	if st.Resources, st.NotResources, err = either(m, "Resource", "NotResource", false); err != nil {
		return st, err
	}
	if c, ok := m["Condition"]; ok {
		if st.Conditions, err = parseConditions(c); err != nil {
			return st, fmt.Errorf("Condition: %w", err)
		}
	}
	return st, nil
}

func either(m map[string]json.RawMessage, a, notA string, lower bool) (yes, no []string, err error) {
	_, hasA := m[a]
	_, hasN := m[notA]
	switch {
	case hasA && hasN:
		return nil, nil, fmt.Errorf("both %s and %s", a, notA)
	case hasA:
		yes, err = stringOrList(m[a])
	case hasN:
		no, err = stringOrList(m[notA])
	default:
		return nil, nil, fmt.Errorf("no %s", a)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", a, err)
	}
	if lower {
		for i := range yes {
			yes[i] = strings.ToLower(yes[i])
		}
		for i := range no {
			no[i] = strings.ToLower(no[i])
		}
	}
	return yes, no, nil
}

func stringOrList(raw json.RawMessage) ([]string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return []string{s}, nil
	}
	var l []string
	if err := json.Unmarshal(raw, &l); err != nil {
		return nil, errors.New("must be a string or an array of strings")
	}
	return l, nil
}

func parsePrincipal(raw json.RawMessage) ([]string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		if s != "*" {
			return nil, errors.New(`a string Principal must be "*"`)
		}
		return []string{"*"}, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, errors.New(`must be "*" or an object such as {"AWS": "arn:aws:iam::111122223333:root"}`)
	}
	out := []string{}
	for k, v := range m {
		l, err := stringOrList(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		if k == "AWS" {
			out = append(out, l...)
		}
		// Service and Federated principals never match a caller of this
		// server; they are kept out.
	}
	return out, nil
}

func parseConditions(raw json.RawMessage) ([]Condition, error) {
	var block map[string]map[string]json.RawMessage
	if err := json.Unmarshal(raw, &block); err != nil {
		return nil, errors.New(`must be an object such as {"StringEquals": {"kms:CallerAccount": "111122223333"}}`)
	}
	var out []Condition
	for opName, keys := range block {
		c := Condition{}
		name := opName
		if set, rest, ok := strings.Cut(name, ":"); ok {
			if set != "ForAnyValue" && set != "ForAllValues" {
				return nil, fmt.Errorf("unknown set operator %q", set)
			}
			c.Set, name = set, rest
		}
		if base, ok := strings.CutSuffix(name, "IfExists"); ok {
			c.IfExists, name = true, base
		}
		if !knownOps[name] {
			return nil, fmt.Errorf("condition operator %q is not supported", opName)
		}
		c.Op = name
		for k, v := range keys {
			vals, err := conditionValues(v)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", opName, k, err)
			}
			lk := strings.ToLower(k)
			if !knownCondKeys[lk] && !strings.HasPrefix(lk, "kms:encryptioncontext:") {
				return nil, fmt.Errorf("condition key %q is not supported by this server", k)
			}
			cc := c
			cc.Key, cc.Values = lk, vals
			out = append(out, cc)
		}
	}
	return out, nil
}

func conditionValues(raw json.RawMessage) ([]string, error) {
	var one any
	if err := json.Unmarshal(raw, &one); err != nil {
		return nil, err
	}
	list, ok := one.([]any)
	if !ok {
		list = []any{one}
	}
	var out []string
	for _, x := range list {
		switch v := x.(type) {
		case string:
			out = append(out, v)
		case bool:
			out = append(out, fmt.Sprint(v))
		case float64:
			out = append(out, fmt.Sprint(v))
		default:
			return nil, errors.New("values must be strings, booleans or numbers")
		}
	}
	return out, nil
}

// hasConditions reports whether any statement has a condition: without,
// the request's condition keys are never read.
func (p *Policy) hasConditions() bool {
	for i := range p.Statements {
		if len(p.Statements[i].Conditions) > 0 {
			return true
		}
	}
	return false
}

// request is what a policy is evaluated against.
type request struct {
	principal *Principal
	action    string // e.g. "kms:Encrypt"
	resource  string // the key ARN
	// anyResource: every statement's Resource names the key (a key not
	// created yet, whose ARN is unknown).
	anyResource bool
	keys        map[string][]string // condition keys (lower case) present in the request
}

// decision is the outcome of evaluating one key policy.
type decision int

const (
	implicitDeny      decision = iota
	allowed                    // a statement allows the principal directly
	allowedViaAccount          // a statement allows the principal's account: its IAM permissions decide
	explicitDeny
)

// evaluate applies the policy to req: an explicit Deny wins over every
// Allow; with no Allow, the request is implicitly denied.
func (p *Policy) evaluate(req *request) decision {
	d := implicitDeny
	action := strings.ToLower(req.action)
	for i := range p.Statements {
		st := &p.Statements[i]
		via, ok := st.matchPrincipal(req.principal)
		if !ok || !st.matchAction(action) || !(req.anyResource || st.matchResource(req.resource)) || !st.matchConditions(req) {
			continue
		}
		if st.Deny {
			return explicitDeny
		}
		switch {
		case !via:
			d = allowed
		case d == implicitDeny:
			d = allowedViaAccount
		}
	}
	return d
}

// matchPrincipal reports whether the statement names the caller, and
// whether it does so through the caller's account (the account ID or its
// root ARN), which delegates to the caller's IAM permissions.
func (st *Statement) matchPrincipal(p *Principal) (viaAccount, ok bool) {
	if st.NotPrincipal != nil {
		for _, n := range st.NotPrincipal {
			if _, m := principalMatches(n, p); m {
				return false, false
			}
		}
		return false, true
	}
	for _, n := range st.Principals {
		if via, m := principalMatches(n, p); m {
			return via, true
		}
	}
	return false, false
}

func principalMatches(name string, p *Principal) (viaAccount, ok bool) {
	switch {
	case name == "*":
		return false, true
	case name == p.AccountID:
		return true, true
	case name == p.ARN:
		return false, true
	case strings.HasSuffix(name, ":root") && accountOf(name) == p.AccountID && strings.HasPrefix(name, "arn:"):
		return true, true
	}
	return false, false
}

// matchAction reports whether the statement covers a, an action in lower
// case.
func (st *Statement) matchAction(a string) bool {
	if st.NotActions != nil {
		for _, pat := range st.NotActions {
			if globMatch(pat, a) {
				return false
			}
		}
		return true
	}
	for _, pat := range st.Actions {
		if globMatch(pat, a) {
			return true
		}
	}
	return false
}

func (st *Statement) matchResource(res string) bool {
	if st.NotResources != nil {
		for _, pat := range st.NotResources {
			if globMatch(pat, res) {
				return false
			}
		}
		return true
	}
	for _, pat := range st.Resources {
		if globMatch(pat, res) {
			return true
		}
	}
	return false
}

func (st *Statement) matchConditions(req *request) bool {
	for i := range st.Conditions {
		if !st.Conditions[i].match(req) {
			return false
		}
	}
	return true
}

// match evaluates one condition with IAM's semantics: a key absent from
// the request fails a positive operator and passes a negated one (and
// passes any operator with IfExists); ForAllValues passes on an empty set.
func (c *Condition) match(req *request) bool {
	vals, present := req.keys[c.Key]
	if c.Op == "Null" {
		want := len(c.Values) > 0 && strings.EqualFold(c.Values[0], "true")
		return want == !present
	}
	negated := strings.Contains(c.Op, "Not")
	if !present {
		if c.IfExists || c.Set == "ForAllValues" {
			return true
		}
		return negated && c.Set == ""
	}
	one := func(v string) bool { // v matches some policy value (positive sense)
		for _, pv := range c.Values {
			if matchOp(c.Op, pv, v) {
				return true
			}
		}
		return false
	}
	switch c.Set {
	case "ForAllValues":
		for _, v := range vals {
			if one(v) == negated {
				return false
			}
		}
		return true
	default: // ForAnyValue, and single-valued use of a multi-valued key
		if negated && c.Set == "" {
			for _, v := range vals {
				if one(v) {
					return false
				}
			}
			return true
		}
		for _, v := range vals {
			if one(v) != negated {
				return true
			}
		}
		return false
	}
}

// matchOp reports whether request value v matches policy value pv under
// op's positive sense (StringNotEquals matches as StringEquals; the caller
// negates).
func matchOp(op, pv, v string) bool {
	switch op {
	case "StringEquals", "StringNotEquals", "ArnEquals", "ArnNotEquals":
		return pv == v
	case "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase":
		return strings.EqualFold(pv, v)
	case "StringLike", "StringNotLike", "ArnLike", "ArnNotLike":
		return globMatch(pv, v)
	case "Bool":
		return strings.EqualFold(pv, v)
	}
	return false
}

// globMatch matches s against pattern with * (any run) and ? (one
// character).
func globMatch(pattern, s string) bool {
	px, sx := 0, 0
	nextPx, nextSx := -1, -1
	for px < len(pattern) || sx < len(s) {
		if px < len(pattern) {
			switch c := pattern[px]; c {
			case '*':
				nextPx, nextSx = px, sx+1
				px++
				continue
			case '?':
				if sx < len(s) {
					px++
					sx++
					continue
				}
			default:
				if sx < len(s) && s[sx] == c {
					px++
					sx++
					continue
				}
			}
		}
		if nextSx > 0 && nextSx <= len(s) {
			px, sx = nextPx, nextSx
			continue
		}
		return false
	}
	return true
}
