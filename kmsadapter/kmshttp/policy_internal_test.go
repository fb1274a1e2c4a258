package kmshttp

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestConditionSemantics(t *testing.T) {
	p := &Principal{ARN: "arn:aws:iam::111122223333:user/bob", AccountID: "111122223333"}
	ec := func(kv ...string) map[string][]string {
		m := map[string][]string{}
		var keys []string
		for i := 0; i < len(kv); i += 2 {
			m["kms:encryptioncontext:"+kv[i]] = []string{kv[i+1]}
			keys = append(keys, kv[i])
		}
		if len(keys) > 0 {
			m["kms:encryptioncontextkeys"] = keys
		}
		return m
	}
	cases := []struct {
		cond string
		keys map[string][]string
		want bool
	}{
		{`{"StringEquals":{"kms:EncryptionContext:dept":"a"}}`, ec("dept", "a"), true},
		{`{"StringEquals":{"kms:EncryptionContext:dept":"a"}}`, ec("dept", "b"), false},
		{`{"StringEquals":{"kms:EncryptionContext:dept":"a"}}`, ec(), false},
		{`{"StringEquals":{"kms:EncryptionContext:Dept":["x","a"]}}`, ec("dept", "a"), true}, // condition key names ignore case
		{`{"StringEquals":{"kms:EncryptionContext:dept":"A"}}`, ec("dept", "a"), false},      // values do not
		{`{"StringEqualsIgnoreCase":{"kms:EncryptionContext:dept":"A"}}`, ec("dept", "a"), true},
		{`{"StringNotEquals":{"kms:EncryptionContext:dept":"a"}}`, ec("dept", "b"), true},
		{`{"StringNotEquals":{"kms:EncryptionContext:dept":"a"}}`, ec("dept", "a"), false},
		{`{"StringNotEquals":{"kms:EncryptionContext:dept":"a"}}`, ec(), true}, // absent key: a negated operator passes
		{`{"StringLike":{"kms:EncryptionContext:dept":"fin*"}}`, ec("dept", "finance"), true},
		{`{"StringLike":{"kms:EncryptionContext:dept":"fin?"}}`, ec("dept", "finance"), false},
		{`{"StringNotLike":{"kms:EncryptionContext:dept":"fin*"}}`, ec("dept", "hr"), true},
		{`{"StringEqualsIfExists":{"kms:EncryptionContext:dept":"a"}}`, ec(), true},
		{`{"StringEqualsIfExists":{"kms:EncryptionContext:dept":"a"}}`, ec("dept", "b"), false},
		{`{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":["dept","x"]}}`, ec("dept", "a", "y", "b"), true},
		{`{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"x"}}`, ec("dept", "a"), false},
		{`{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"x"}}`, ec(), false},
		{`{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["dept","y"]}}`, ec("dept", "a", "y", "b"), true},
		{`{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["dept"]}}`, ec("dept", "a", "y", "b"), false},
		{`{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["dept"]}}`, ec(), true}, // IAM's empty-set rule
		{`{"Null":{"kms:EncryptionContextKeys":"true"}}`, ec(), true},
		{`{"Null":{"kms:EncryptionContextKeys":"false"}}`, ec(), false},
		{`{"StringEquals":{"kms:CallerAccount":"111122223333"}}`, map[string][]string{"kms:calleraccount": {"111122223333"}}, true},
		{`{"StringEquals":{"kms:CallerAccount":"444455556666"}}`, map[string][]string{"kms:calleraccount": {"111122223333"}}, false},
		{`{"StringEquals":{"kms:EncryptionContext:a":"1","kms:EncryptionContext:b":"2"}}`, ec("a", "1", "b", "2"), true},
		{`{"StringEquals":{"kms:EncryptionContext:a":"1","kms:EncryptionContext:b":"2"}}`, ec("a", "1", "b", "3"), false},
	}
	for _, c := range cases {
		pol, err := ParsePolicy(`{"Statement":{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/bob"},"Action":"kms:Decrypt","Resource":"*","Condition":` + c.cond + `}}`)
		require.NoError(t, err, c.cond)
		got := pol.evaluate(&request{principal: p, action: "kms:Decrypt", resource: "arn:aws:kms:us-east-1:111122223333:key/k", keys: c.keys})
		require.Equal(t, c.want, got == allowed, "%s with %v", c.cond, c.keys)
	}
}

func TestPrincipalsActionsResources(t *testing.T) {
	bob := &Principal{ARN: "arn:aws:iam::111122223333:user/bob", AccountID: "111122223333"}
	eve := &Principal{ARN: "arn:aws:iam::444455556666:user/eve", AccountID: "444455556666"}
	key := "arn:aws:kms:us-east-1:111122223333:key/k1"
	eval := func(stmts string, p *Principal, action string) decision {
		pol, err := ParsePolicy(`{"Version":"2012-10-17","Statement":` + stmts + `}`)
		require.NoError(t, err, stmts)
		return pol.evaluate(&request{principal: p, action: action, resource: key, keys: map[string][]string{}})
	}
	root := `{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}`
	require.Equal(t, allowedViaAccount, eval("["+root+"]", bob, "kms:Encrypt"))
	require.Equal(t, implicitDeny, eval("["+root+"]", eve, "kms:Encrypt"))
	acct := `{"Effect":"Allow","Principal":{"AWS":"111122223333"},"Action":"kms:Encrypt","Resource":"*"}`
	require.Equal(t, allowedViaAccount, eval("["+acct+"]", bob, "kms:Encrypt"))
	require.Equal(t, implicitDeny, eval("["+acct+"]", bob, "kms:Decrypt"))
	wild := `{"Effect":"Allow","Principal":"*","Action":["kms:Generate*","kms:describe*"],"Resource":"` + key + `"}`
	require.Equal(t, allowed, eval("["+wild+"]", eve, "kms:GenerateDataKeyPair"))
	require.Equal(t, allowed, eval("["+wild+"]", eve, "kms:DescribeKey"))
	require.Equal(t, implicitDeny, eval("["+wild+"]", eve, "kms:Encrypt"))
	otherKey := `{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"arn:aws:kms:us-east-1:111122223333:key/k2"}`
	require.Equal(t, implicitDeny, eval("["+otherKey+"]", bob, "kms:Encrypt"))
	deny := `{"Effect":"Deny","Principal":{"AWS":"arn:aws:iam::111122223333:user/bob"},"NotAction":["kms:Describe*"],"Resource":"*"}`
	require.Equal(t, explicitDeny, eval("["+root+","+deny+"]", bob, "kms:Encrypt"))
	require.Equal(t, allowedViaAccount, eval("["+root+","+deny+"]", bob, "kms:DescribeKey"))
	notP := `{"Effect":"Deny","NotPrincipal":{"AWS":"arn:aws:iam::111122223333:user/bob"},"Action":"kms:*","Resource":"*"}`
	require.Equal(t, explicitDeny, eval("["+wild+","+notP+"]", eve, "kms:DescribeKey"))
	require.Equal(t, allowed, eval("["+wild+","+notP+"]", bob, "kms:DescribeKey"))

	for _, bad := range []string{
		`{"Statement":[{"Effect":"allow","Principal":"*","Action":"kms:*","Resource":"*"}]}`,
		`{"Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}`,
		`{"Statement":[{"Effect":"Allow","Principal":"*","Resource":"*"}]}`,
		`{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"DateLessThan":{"aws:CurrentTime":"2020"}}}]}`,
		`{"Statement":[{"Effect":"Allow","Principal":"bob","Action":"kms:*","Resource":"*"}]}`,
		`{"Statement":[]}`, `[]`, `{"Statement":"x"}`,
		// What this server would not evaluate as written: a condition key
		// it never supplies (the Deny would never apply), a misspelt
		// element (the Allow would lose its condition), a top-level name
		// in the wrong case.
		`{"Statement":[{"Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":"false"}}}]}`,
		`{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"StringEquals":{"kms:ViaService":"s3.amazonaws.com"}}}]}`,
		`{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condtion":{"StringEquals":{"kms:EncryptionContext:tenant":"acme"}}}]}`,
		`{"statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}]}`,
	} {
		_, err := ParsePolicy(bad)
		require.Error(t, err, bad)
	}
}

func TestGlob(t *testing.T) {
	for _, c := range []struct {
		p, s string
		want bool
	}{
		{"*", "", true}, {"*", "abc", true}, {"a*c", "abbbc", true}, {"a*c", "abbb", false},
		{"a?c", "abc", true}, {"a?c", "ac", false}, {"*x*", "abxcd", true}, {"", "", true}, {"", "a", false},
		{"kms:generate*", "kms:generatedatakey", true}, {"a**b", "ab", true},
	} {
		require.Equal(t, c.want, globMatch(c.p, c.s), "%q %q", c.p, c.s)
	}
}

func TestAccountOf(t *testing.T) {
	for arn, want := range map[string]string{
		"arn:aws:iam::111122223333:root":      "111122223333",
		"arn:aws:iam::111122223333:user/a:b":  "111122223333",
		"arn:aws:kms:us-east-1:444455556666:": "444455556666",
		"arn:aws:iam::111122223333":           "",
		"111122223333":                        "",
		"":                                    "",
		"a:b:c:d::f":                          "",
	} {
		require.Equal(t, want, accountOf(arn), arn)
	}
}
