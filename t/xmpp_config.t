#!/usr/bin/perl

# nginx -t and the partner policy: Lync's negotiation matrix (all 18
# rows), Lync's defaults, duplicate and local domains, bad directives,
# the server roles.  One good configuration is run at the end.

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::Nginx;
use Test::Nginx::Stream qw/ stream /;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has(qw/stream/)->plan(120);

my $dir = $t->testdir();
my $n = 0;

###############################################################################

# A configuration as the suite writes it everywhere: local domains, the
# partner blocks, one inbound server.  Parts can be replaced:
#   local    => the local domains lines (before the partners)
#   partners => the partner blocks
#   after    => lines after the partner blocks
#   server   => the server's directives besides listen

sub conf {
	my (%o) = @_;

	my $local = $o{local}
		// 'xmpp_federation_local_domains contoso.example;';
	my $partners = $o{partners} // '';
	my $after = $o{after} // '';
	my $server = $o{server} // <<'EOF';
xmpp_federation inbound;
xmpp_federation_pass 127.0.0.1:%%PORT_8081%%;
EOF

	return <<"EOF";
%%TEST_GLOBALS%%

events {
}

stream {
${\ indent($local, 4) }

${\ indent($partners, 4) }

${\ indent($after, 4) }

    server {
        listen 127.0.0.1:%%PORT_8080%%;
${\ indent($server, 8) }
    }
}
EOF
}

sub indent {
	my ($text, $n) = @_;

	chomp($text);
	return join("\n", map { length $_ ? ' ' x $n . $_ : '' }
		split(/\n/, $text, -1));
}

# writes the configuration to a file of its own, runs nginx -t:
# (ok, output, path of the file)

sub check {
	my (%o) = @_;

	my $name = 'c' . ++$n . '.conf';

	$t->write_file_expand($name, conf(%o));

	my ($ok, $out) = $t->test_config($name);

	return ($ok, $out, "$dir/$name");
}

# the number of the first line of a written file that matches $re;
# computed from the file as written, %%TEST_GLOBALS%% expanded

sub line_of {
	my ($path, $re) = @_;

	open(my $fh, '<', $path) or die "Can't open $path: $!\n";
	my @lines = <$fh>;
	close $fh;

	for my $i (0 .. $#lines) {
		return $i + 1 if $lines[$i] =~ $re;
	}

	die "no line matches $re in $path\n";
}

sub partner_line {
	my ($path, $domain) = @_;
	return line_of($path, qr/^\s*xmpp_federation_partner\s+\Q$domain\E\s/);
}

# the class of an nginx -t result: error, warn or ok

sub class {
	my ($ok, $out) = @_;

	return 'error' unless $ok;
	return 'warn' if $out =~ /\[warn\]/;
	return 'ok';
}

# an [emerg] or [warn] line holding this text

sub emerg {
	my ($text) = @_;
	return qr/\[emerg\] \Q$text\E/;
}

sub warning {
	my ($text) = @_;
	return qr/\[warn\] \Q$text\E/;
}

###############################################################################

# the negotiation matrix, DESIGN.md section 1, in Lync's order; each
# configuration has a harmless partner (row 7) before the one tested, so
# that messages must point at the right partner and line

my %reason = (
	'cannot authenticate: SASL needs TLS' =>
		qr/ cannot authenticate: [^\n]*SASL needs TLS/,
	'cannot authenticate: "sasl" is not_supported' =>
		qr/ cannot authenticate: [^\n]*"sasl" is not_supported/,
	'SASL needs TLS' => qr/: SASL needs TLS(?![^\n]*never)/,
	'SASL can never happen' => qr/: SASL can never happen/,
	'dialback is never used' => qr/: dialback is never used/,
);

my @matrix = (
	# tls, sasl, dialback, class, reason
	[ qw/ required      required      on  /, 'warn',
		'dialback is never used' ],
	[ qw/ required      required      off /, 'ok' ],
	[ qw/ optional      required      on  /, 'warn', 'SASL needs TLS' ],
	[ qw/ optional      required      off /, 'warn', 'SASL needs TLS' ],
	[ qw/ not_supported required      on  /, 'warn',
		'SASL can never happen' ],
	[ qw/ not_supported required      off /, 'error',
		'cannot authenticate: SASL needs TLS' ],
	[ qw/ required      optional      on  /, 'ok' ],
	[ qw/ required      optional      off /, 'ok' ],
	[ qw/ optional      optional      on  /, 'warn', 'SASL needs TLS' ],
	[ qw/ optional      optional      off /, 'warn', 'SASL needs TLS' ],
	[ qw/ not_supported optional      on  /, 'warn',
		'SASL can never happen' ],
	[ qw/ not_supported optional      off /, 'error',
		'cannot authenticate: SASL needs TLS' ],
	[ qw/ required      not_supported on  /, 'ok' ],
	[ qw/ required      not_supported off /, 'error',
		'cannot authenticate: "sasl" is not_supported' ],
	[ qw/ optional      not_supported on  /, 'ok' ],
	[ qw/ optional      not_supported off /, 'error',
		'cannot authenticate: "sasl" is not_supported' ],
	[ qw/ not_supported not_supported on  /, 'ok' ],
	[ qw/ not_supported not_supported off /, 'error',
		'cannot authenticate: SASL needs TLS' ],
);

for my $i (0 .. $#matrix) {
	my ($tls, $sasl, $dialback, $class, $why) = @{ $matrix[$i] };
	my $row = $i + 1;

	my ($ok, $out, $path) = check(partners => <<"EOF");
# row $row of the matrix
xmpp_federation_partner other.example {
    tls      required;
    sasl     optional;
    dialback on;
}

xmpp_federation_partner fabrikam.example {
    description "row $row";
    tls         $tls;
    sasl        $sasl;
    dialback    $dialback;
}
EOF

	my $line = partner_line($path, 'fabrikam.example');
	my $name = "row $row tls=$tls sasl=$sasl dialback=$dialback";
	my $at = qr/[^\n]*\Q in $path:$line\E\n/;

	is(class($ok, $out), $class, "$name: $class") or diag($out);

	if ($class eq 'error') {
		like($out, qr/\[emerg\] partner "fabrikam\.example"$reason{$why}$at/,
			"$name: error $why") or diag($out);

	} elsif ($class eq 'warn') {
		my @warn = $out =~ /^.*\[warn\].*\n/mg;

		ok(@warn == 1 && $warn[0]
			=~ /\[warn\] partner "fabrikam\.example"$reason{$why}$at/,
			"$name: warning $why") or diag($out);

	} else {
		ok($out !~ /\[(?:warn|emerg)\]/ && $out =~ /test is successful/,
			"$name: no warning") or diag($out);
	}
}

###############################################################################

# Lync's defaults: tls required, sasl required, dialback on

{
	my ($ok, $out, $path) = check(partners => <<'EOF');
xmpp_federation_partner fabrikam.example {
}
EOF

	my $line = partner_line($path, 'fabrikam.example');

	is(class($ok, $out), 'warn', 'defaults: accepted with a warning')
		or diag($out);
	like($out, warning('partner "fabrikam.example": dialback is never used'
		. ' with "tls required" and "sasl required"'
		. " in $path:$line\n"),
		'defaults: tls required sasl required dialback on') or diag($out);
}

{
	# dialback on by default: else this would be refused
	my ($ok, $out) = check(partners => <<'EOF');
xmpp_federation_partner fabrikam.example { tls not_supported; }
EOF

	ok($ok && $out =~ /\[warn\] partner "fabrikam\.example": SASL can never/
		&& $out =~ /\("sasl required" is ignored\)/,
		'defaults: dialback on, sasl required') or diag($out);
}

###############################################################################

# refused configurations: each is refused, and the output says why;
# a reason given as code gets the path of the file written

my @refused = (

	[ 'primary domain twice', partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    type federated;
}
xmpp_federation_partner fabrikam.example {
    type public_verified;
}
EOF
	  reason => sub {
		my ($path) = @_;
		my $first = partner_line($path, 'fabrikam.example');
		my $second = $first + 3;
		emerg('domain "fabrikam.example" is already a domain of partner'
			. qq{ "fabrikam.example" (line $first) in $path:$second\n});
	  } ],

	[ 'primary in one partner, additional in another', partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
}
xmpp_federation_partner tailspin.example {
    additional_domains corp.tailspin.example fabrikam.example;
}
EOF
	  reason => sub {
		my ($path) = @_;
		my $first = partner_line($path, 'fabrikam.example');
		my $line = line_of($path, qr/additional_domains/);
		emerg('domain "fabrikam.example" is already a domain of partner'
			. qq{ "fabrikam.example" (line $first) in $path:$line\n});
	  } ],

	[ 'additional in one partner, primary in another', partners => <<'EOF',
xmpp_federation_partner tailspin.example {
    additional_domains fabrikam.example;
}
xmpp_federation_partner fabrikam.example {
}
EOF
	  reason => emerg('domain "fabrikam.example" is already a domain'
		. ' of partner "tailspin.example"') ],

	[ 'additional domain in two partners', partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    additional_domains corp.fabrikam.example;
}
xmpp_federation_partner tailspin.example {
    additional_domains corp.tailspin.example;
    additional_domains corp.fabrikam.example;
}
EOF
	  reason => emerg('domain "corp.fabrikam.example" is already a'
		. ' domain of partner "fabrikam.example"') ],

	[ 'the same additional domain twice in one partner',
	  partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    additional_domains corp.fabrikam.example it.fabrikam.example
                       corp.fabrikam.example;
}
EOF
	  reason => emerg('domain "corp.fabrikam.example" is listed twice in'
		. ' partner "fabrikam.example"') ],

	[ 'the primary domain again as additional domain', partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    additional_domains fabrikam.example;
}
EOF
	  reason => emerg('domain "fabrikam.example" is listed twice in'
		. ' partner "fabrikam.example"') ],

	[ 'partner domain that is a local domain (local first)',
	  partners => <<'EOF',
xmpp_federation_partner contoso.example {
}
EOF
	  reason => emerg('domain "contoso.example" of partner'
		. ' "contoso.example" is also a local domain') ],

	[ 'additional domain that is a local domain (local first)',
	  partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    additional_domains contoso.example;
}
EOF
	  reason => emerg('domain "contoso.example" of partner'
		. ' "fabrikam.example" is also a local domain') ],

	[ 'partner domain that is a local domain (local after)',
	  local => '', partners => <<'EOF',
xmpp_federation_partner contoso.example {
}
EOF
	  after => 'xmpp_federation_local_domains contoso.example;',
	  reason => emerg('local domain "contoso.example" is also a domain'
		. ' of partner "contoso.example"') ],

	[ 'additional domain that is a local domain (local after)',
	  local => '', partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    additional_domains contoso.example;
}
EOF
	  after => 'xmpp_federation_local_domains chat.contoso.example'
		. ' contoso.example;',
	  reason => emerg('local domain "contoso.example" is also a domain'
		. ' of partner "fabrikam.example"') ],

	[ 'local domain twice',
	  local => "xmpp_federation_local_domains contoso.example;\n"
		. "xmpp_federation_local_domains chat.contoso.example"
		. " contoso.example;",
	  reason => emerg('local domain "contoso.example" is listed twice') ],

	[ 'partner without a domain', partners => <<'EOF',
xmpp_federation_partner {
}
EOF
	  reason => emerg('invalid number of arguments in'
		. ' "xmpp_federation_partner" directive') ],

	[ 'unknown type', partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    type friendly;
}
EOF
	  reason => emerg('invalid value "friendly"') ],

	[ 'unknown tls', partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    tls maybe;
}
EOF
	  reason => emerg('invalid value "maybe"') ],

	[ 'unknown sasl', partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    sasl sometimes;
}
EOF
	  reason => emerg('invalid value "sometimes"') ],

	[ 'unknown dialback', partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    dialback maybe;
}
EOF
	  reason => emerg('invalid value "maybe" in "dialback" directive') ],

	[ 'unknown directive in a partner', partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    foo bar;
}
EOF
	  reason => sub {
		my ($path) = @_;
		my $line = line_of($path, qr/foo bar;/);
		emerg(qq{unknown directive "foo" in $path:$line\n});
	  } ],

	[ 'listen in a partner', partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    listen 1234;
}
EOF
	  reason => emerg('"listen" directive is not allowed here') ],

	[ 'partner directive in a server', server => <<'EOF',
xmpp_federation inbound;
xmpp_federation_pass 127.0.0.1:%%PORT_8081%%;
tls required;
EOF
	  reason => emerg('"tls" directive is not allowed here') ],

	[ 'partner inside a server', server => <<'EOF',
xmpp_federation inbound;
xmpp_federation_pass 127.0.0.1:%%PORT_8081%%;
xmpp_federation_partner fabrikam.example {
}
EOF
	  reason => emerg('"xmpp_federation_partner" directive is not allowed'
		. ' here') ],

	[ 'duplicate directive in a partner', partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    tls required;
    tls optional;
}
EOF
	  reason => emerg('"tls" directive is duplicate') ],

	[ 'invalid characters in a domain', partners => <<'EOF',
xmpp_federation_partner "bad<domain" {
}
EOF
	  reason => emerg('invalid domain "bad<domain"') ],

	[ 'empty label in an additional domain', partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    additional_domains corp..fabrikam.example;
}
EOF
	  reason => emerg('invalid domain "corp..fabrikam.example"') ],

	# one trailing dot is ignored; a second one leaves an empty label

	[ 'empty last label in a domain', partners => <<'EOF',
xmpp_federation_partner "fabrikam.example.." {
    sasl optional;
}
EOF
	  reason => emerg('invalid domain "fabrikam.example.') ],

	[ 'invalid port in a partner server', partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    server xmpp.fabrikam.example:99999;
}
EOF
	  reason => emerg('invalid port in "server" of partner'
		. ' "fabrikam.example"') ],

	[ 'invalid connection_limit', partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    connection_limit lots;
}
EOF
	  reason => emerg('"connection_limit" directive invalid number') ],

	[ 'inbound without xmpp_federation_pass', server => <<'EOF',
xmpp_federation inbound;
EOF
	  reason => emerg('"xmpp_federation" requires "xmpp_federation_pass"') ],

	[ 'xmpp_federation without local domains', local => '',
	  partners => <<'EOF',
xmpp_federation_partner fabrikam.example {
    sasl optional;
}
EOF
	  reason => emerg('no "xmpp_federation_local_domains" are defined') ],

	[ 'xmpp_federation sideways', server => <<'EOF',
xmpp_federation sideways;
xmpp_federation_pass 127.0.0.1:%%PORT_8081%%;
EOF
	  reason => emerg('invalid value "sideways", it must be "inbound" or'
		. ' "outbound"') ],

	# one content handler per server, whatever the order

	[ 'xmpp_federation after proxy_pass', server => <<'EOF',
proxy_pass 127.0.0.1:%%PORT_8082%%;
xmpp_federation inbound;
xmpp_federation_pass 127.0.0.1:%%PORT_8081%%;
EOF
	  reason => qr/\[emerg\] [^\n]*conflicts with [^\n]*proxy_pass/ ],

	[ 'proxy_pass after xmpp_federation', server => <<'EOF',
xmpp_federation inbound;
xmpp_federation_pass 127.0.0.1:%%PORT_8081%%;
proxy_pass 127.0.0.1:%%PORT_8082%%;
EOF
	  reason => qr/\[emerg\] [^\n]*conflicts with [^\n]*proxy_pass/ ],

	[ 'return after xmpp_federation', server => <<'EOF',
xmpp_federation inbound;
xmpp_federation_pass 127.0.0.1:%%PORT_8081%%;
return "hello";
EOF
	  reason => qr/\[emerg\] [^\n]*conflicts with / ],

	# domains are compared case-insensitively, a trailing dot ignored

	[ 'normalised domain twice', partners => <<'EOF',
xmpp_federation_partner Fabrikam.Example. {
    sasl optional;
}
xmpp_federation_partner tailspin.example {
    sasl optional;
    additional_domains fabrikam.example;
}
EOF
	  reason => emerg('domain "fabrikam.example" is already a domain of'
		. ' partner "fabrikam.example"') ],

	[ 'normalised local domain as partner',
	  local => 'xmpp_federation_local_domains Contoso.Example.;',
	  partners => <<'EOF',
xmpp_federation_partner CONTOSO.example {
}
EOF
	  reason => emerg('domain "contoso.example" of partner'
		. ' "contoso.example" is also a local domain') ],
);

for my $r (@refused) {
	my ($name, %o) = @$r;
	my $reason = delete $o{reason};

	my ($ok, $out, $path) = check(%o);

	$reason = $reason->($path) if ref $reason eq 'CODE';

	ok(!$ok && $out =~ /test failed/, "$name: refused") or diag($out);
	like($out, $reason, "$name: reason") or diag($out);
}

###############################################################################

# accepted: several partners with every directive; domains that differ
# only from each other, not after normalisation

$t->write_file_expand('nginx.conf', conf(partners => <<'EOF'));
xmpp_federation_dialback_secret "not so secret";

xmpp_federation_partner fabrikam.example {
    description        "Fabrikam, Inc.";
    additional_domains corp.fabrikam.example it.fabrikam.example;
    additional_domains Chat.Fabrikam.Example.;
    type               public_verified;
    tls                required;
    sasl               optional;
    dialback           on;
    connection_limit   5;
    keepalive          off;
    server             127.0.0.1:%%PORT_8083%%;
}

xmpp_federation_partner tailspin.example. {
    description      "";
    type             federated;
    tls              required;
    sasl             required;
    dialback         off;
    connection_limit 100;
    keepalive        on;
    server           xmpp.tailspin.example;
}

xmpp_federation_partner xn--bcher-kva.example {
    additional_domains bücher.example _xmpp.b-2.example;
    type     public_unverified;
    tls      not_supported;
    sasl     not_supported;
    dialback on;
    server   xmpp.bücher.example:5270;
}
EOF

my ($ok, $out) = $t->test_config('nginx.conf');

ok($ok && $out =~ /test is successful/, 'good partners accepted')
	or diag($out);
unlike($out, qr/\[(?:warn|emerg)\]/, 'good partners: no warning')
	or diag($out);

# xmpp_federation outbound and the preread sniffer, with an upstream

($ok, $out) = check(partners => <<'EOF', server => <<'EOF');
xmpp_federation_partner fabrikam.example {
    sasl optional;
}

upstream gateway {
    server 127.0.0.1:%%PORT_8081%%;
}
EOF
xmpp_federation outbound;
xmpp_federation_pass gateway;
xmpp_federation_preread on;
allow 127.0.0.1;
deny all;
EOF

ok($ok && $out !~ /\[(?:warn|emerg)\]/, 'outbound with an upstream accepted')
	or diag($out);

###############################################################################

# xmpp_federation_verify_cache

($ok, $out) = check(after => 'xmpp_federation_verify_cache 64 valid=10m;');
ok($ok && $out !~ /\[(?:warn|emerg)\]/, 'verify_cache 64 valid=10m accepted')
	or diag($out);

($ok, $out) = check(after => 'xmpp_federation_verify_cache off;');
ok($ok, 'verify_cache off accepted') or diag($out);

for my $bad ([ '0', 'invalid number of chains "0"' ],
	[ 'many', 'invalid number of chains "many"' ],
	[ '8 valid=soon', 'invalid time "valid=soon"' ],
	[ '8 for=10m', 'invalid parameter "for=10m"' ],
	[ 'off valid=1s', '"xmpp_federation_verify_cache" directive takes'
		. ' no "valid" when "off"' ])
{
	($ok, $out) = check(after => "xmpp_federation_verify_cache $bad->[0];");
	ok(!$ok && $out =~ emerg($bad->[1]), "verify_cache $bad->[0] refused")
		or diag($out);
}

($ok, $out) = check(after => "xmpp_federation_verify_cache 8;\n"
	. "xmpp_federation_verify_cache 16;");
ok(!$ok && $out =~ /is duplicate/, 'verify_cache twice refused')
	or diag($out);

###############################################################################

# the good configuration runs and answers a stream header from an
# additional domain, written in another case, with the policy of its
# partner

$t->run();

my $s = stream('127.0.0.1:' . port(8080));

$s->write("<?xml version='1.0'?><stream:stream xmlns='jabber:server'"
	. " xmlns:stream='http://etherx.jabber.org/streams'"
	. " xmlns:db='jabber:server:dialback' version='1.0'"
	. " to='contoso.example' from='Corp.Fabrikam.Example.'>");

my $in = '';

for (1 .. 5) {
	my $buf = $s->read();
	last unless defined $buf && length $buf;
	$in .= $buf;
	last if $in =~ m!</stream:features>!;
}

like($in, qr/<stream:stream [^>]*from=['"]contoso\.example['"]/,
	'running: stream header answered');
like($in, qr/<stream:features><starttls[^>]*>\s*<required\/><\/starttls><\/stream:features>/s,
	'running: features of the partner');

###############################################################################
