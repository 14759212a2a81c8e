#!/usr/bin/perl

# Server dialback (XEP-0220) through the edge with scripted peers: the
# receiving role against a scripted authoritative server, the hand-off to a
# scripted gateway that verifies the edge's key at the internal listener,
# the authoritative role from the stateless key, and relay policing.

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use Digest::SHA qw/ hmac_sha256_hex sha256 /;

use Test::Nginx;
use Test::Nginx::XMPP qw/ xmpp /;
use Test::XMPP::Peers qw/ authoritative gateway wait_for_file /;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has(qw/stream xmpp_federation/);

my $secret = 'a long random secret for the tests';

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    log_format xmpp '\$xmpp_domains|\$xmpp_auth|\$xmpp_tls|\$xmpp_stanzas';
    access_log %%TESTDIR%%/access.log xmpp;

    xmpp_federation_local_domains contoso.example other.example;
    xmpp_federation_dialback_secret "$secret";

    xmpp_federation_partner fabrikam.example {
        additional_domains corp.fabrikam.example;
        type federated;
        tls not_supported;
        sasl not_supported;
        dialback on;
        server 127.0.0.1:%%PORT_8090%%;
    }

    xmpp_federation_partner litware.example {
        tls optional;
        sasl not_supported;
        server 127.0.0.1:%%PORT_8090%%;
    }

    xmpp_federation_partner deadend.example {
        tls not_supported;
        sasl not_supported;
        server 127.0.0.1:%%PORT_8099%%;
    }

    xmpp_federation_partner tls.example {
        tls required;
        sasl not_supported;
    }

    xmpp_federation_partner nodb.example {
        tls optional;
        sasl optional;
        dialback off;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        xmpp_federation_dialback_timeout 3s;
    }

    server {
        listen 127.0.0.1:%%PORT_8081%%;
        xmpp_federation outbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
    }

    server {
        listen 127.0.0.1:%%PORT_8083%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        xmpp_federation_idle_timeout 1s;
    }

    server {
        listen 127.0.0.1:%%PORT_8084%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        xmpp_federation_timeout 1s;
    }

    server {
        listen 127.0.0.1:%%PORT_8085%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8092%%;
    }
    server {
        listen 127.0.0.1:%%PORT_8082%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8098%%;
    }
}

EOF

my $d = $t->testdir();
my $edge_out = port(8081);

$t->run_daemon(\&authoritative, port(8090));
$t->run_daemon(\&gateway, port(8091), $edge_out, "$d/gateway.log");
$t->run_daemon(\&gateway, port(8092), $edge_out, "$d/gateway-slow.log",
	slow => 1);
$t->try_run('no xmpp_federation')->plan(61);

$t->waitforsocket('127.0.0.1:' . port(8090));
$t->waitforsocket('127.0.0.1:' . port(8091));
$t->waitforsocket('127.0.0.1:' . port(8092));

###############################################################################

# the whole way: key verified, domain vouched to the gateway, message relayed

my $x = partner('fabrikam.example');
$x->send("<db:result from='fabrikam.example' to='contoso.example'>"
	. "goodkey</db:result>");

my $r = $x->read_element('db:result');
like($r, qr/type='valid'/, 'dialback valid after the gateway accepted');
like($r, qr/from='contoso.example' to='fabrikam.example'/,
	'valid answer addressed');

$x->send("<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='m1'><body>hello alice</body></message>  ");
$x->send("<message from='bob\@fabrikam.example/res'"
	. " to='alice\@contoso.example' id='m2'><body>a &amp; b</body>"
	. "</message>");

ok(wait_for_log("id='m2'"), 'stanzas reached the gateway');

my $log = $t->read_file('gateway.log');
like($log, qr/<message from='bob\@fabrikam.example' to='alice\@contoso.example' id='m1'><body>hello alice<\/body><\/message>  <message/,
	'original bytes relayed, keepalive whitespace included');
like($log, qr/a &amp; b/, 'escapes relayed as sent');
like($log, qr/^<\?xml[^>]*>\s*<stream:stream [^>]*from='fabrikam.example' to='contoso.example'/,
	'gateway stream opened from the partner domain');
like($log, qr/VERIFY valid fabrikam.example/,
	'gateway verified the edge key at the internal listener');
unlike($log, qr/db:result from='fabrikam.example' to='contoso.example'>goodkey/,
	'partner key not forwarded');

# multiplexing: an additional domain on the same stream

$x->send("<db:result from='corp.fabrikam.example' to='contoso.example'>"
	. "goodkey</db:result>");
$r = $x->read_element('db:result');
like($r, qr/from='contoso.example' to='corp.fabrikam.example' type='valid'/,
	'additional domain multiplexed');

$x->send("<message from='eve\@corp.fabrikam.example'"
	. " to='alice\@contoso.example' id='m3'/>");
ok(wait_for_log("id='m3'"), 'stanza from additional domain relayed');

# back to the first domain, and that domain in other case

$x->send("<message from='bob\@fabrikam.example'"
	. " to='alice\@contoso.example' id='m4'/>"
	. "<message from='bob\@FABRIKAM.example'"
	. " to='alice\@Contoso.Example' id='m5'/>");
ok(wait_for_log("id='m5'"), 'stanzas of both domains in turn relayed');
like($t->read_file('gateway.log'), qr/id='m4'/, 'first domain again');

# multiplexed domain of another partner, and an unlisted one

$x->send("<db:result from='litware.example' to='contoso.example'>"
	. "goodkey</db:result>");
$r = $x->read_element('db:result');
like($r, qr/type='error'.*policy-violation/, 'other partner refused');

$x->send("<db:result from='unlisted.example' to='contoso.example'>"
	. "goodkey</db:result>");
$r = $x->read_element('db:result');
like($r, qr/type='error'.*not-authorized/, 'unlisted domain refused');

$x->send("<db:result from='fabrikam.example' to='nowhere.example'>"
	. "goodkey</db:result>");
$r = $x->read_element('db:result');
like($r, qr/type='error'.*item-not-found/, 'unknown local domain refused');

# a spoofed from ends the stream, nothing of it delivered

$x->send("<message from='mallory\@litware.example'"
	. " to='alice\@contoso.example' id='spoof'><body>x</body></message>");
is($x->stream_error(), 'invalid-from', 'spoofed from: invalid-from');
ok($x->closed(), 'spoofed from: closed');
unlike($t->read_file('gateway.log'), qr/spoof/,
	'spoofed stanza not delivered');

# after a run of stanzas between two domains, one domain of the same
# length that differs in a byte is not taken for it, either way

$x = authenticated('fabrikam.example');
$x->send("<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='run1'/><message from='bob\@fabrikan.example'"
	. " to='alice\@contoso.example' id='near1'/>");
is($x->stream_error(), 'invalid-from', 'near-miss from: invalid-from');
ok(wait_for_log("id='run1'"), 'stanza before the near miss relayed');

$x = authenticated('fabrikam.example');
$x->send("<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='run2'/><message from='bob\@fabrikam.example'"
	. " to='alice\@contoso.exampld' id='near2'/>");
is($x->stream_error(), 'improper-addressing',
	'near-miss to: improper-addressing');
ok(wait_for_log("id='run2'"), 'stanza before the near-miss to relayed');
unlike($t->read_file('gateway.log'), qr/near[12]/,
	'nothing of the near misses relayed');

# the partner ends its stream: both sides end cleanly

$x = authenticated('fabrikam.example');
$x->send("<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='last'/></stream:stream>");
ok($x->read_until(qr{</stream:stream>}), 'end of stream answered');
ok($x->closed(), 'edge closed after the end of stream');
ok(wait_for_log("id='last'/></stream:stream>"),
	'last stanza and the end of stream reached the gateway');

# a tag split across reads goes nowhere before it is checked

$x = authenticated('fabrikam.example');
$x->send("<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='split1'/> <message from='mallory\@litware.example'"
	. " to='alice\@contoso.example' id='spl");
select undef, undef, undef, 0.5;
$x->send("it2'/>");
is($x->stream_error(), 'invalid-from', 'split spoofed stanza refused');
ok(wait_for_log("id='split1'/>"), 'stanza before the split one relayed');
unlike($t->read_file('gateway.log'), qr/mallory|spl$|id='spl[^i]/m,
	'nothing of a split spoofed stanza relayed');

$x = authenticated('fabrikam.example');
$x->send("<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='split3'/></stream:s");
select undef, undef, undef, 0.5;
$x->send("tream>");
ok($x->read_until(qr{</stream:stream>}), 'split end of stream answered');
ok(wait_for_log("id='split3'/></stream:stream>"),
	'split end of stream relayed whole');

# idle streams end after xmpp_federation_idle_timeout

$x = authenticated('fabrikam.example', port(8083));
$x->send(' ');
is($x->stream_error(timeout => 5), 'connection-timeout', 'idle timeout');

# the establishment timeout ends with the hand-off

$x = authenticated('fabrikam.example', port(8084));
select undef, undef, undef, 2.5;
$x->send("<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='late'/>");
ok(wait_for_log("id='late'"), 'relay outlives the establishment timeout');

# a stanza to a foreign domain

$x = authenticated('fabrikam.example');
$x->send("<message from='bob\@fabrikam.example' to='x\@elsewhere.example'"
	. " id='foreign'/>");
is($x->stream_error(), 'improper-addressing', 'to not local');
unlike($t->read_file('gateway.log'), qr/foreign/,
	'stanza to a foreign domain not delivered');

# forged key

$x = partner('fabrikam.example');
$x->send("<db:result from='fabrikam.example' to='contoso.example'>"
	. "forged</db:result>");
like($x->read_element('db:result'), qr/type='invalid'/, 'forged key invalid');

$x->send("<message from='bob\@fabrikam.example'"
	. " to='alice\@contoso.example' id='forged'/>");
is($x->stream_error(), 'invalid-from', 'no stanza after invalid key');

# a peer that does not wait for "valid": its stanzas wait, then go in order

$x = partner('fabrikam.example');
$x->send("<db:result from='fabrikam.example' to='contoso.example'>"
	. "goodkey</db:result>"
	. "<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='held1'/> <message from='bob\@fabrikam.example'"
	. " to='alice\@contoso.example' id='held2'/>");
like($x->read_element('db:result'), qr/type='valid'/,
	'pipelining peer authenticated');
ok(wait_for_log("id='held2'"), 'held stanzas delivered');
like($t->read_file('gateway.log'), qr/id='held1'\/> <message[^>]*id='held2'/,
	'held stanzas delivered in order, as sent');

# held stanzas of a refused key never reach the gateway

$x = partner('fabrikam.example');
$x->send("<db:result from='fabrikam.example' to='contoso.example'>"
	. "forged</db:result>"
	. "<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='heldbad'/>");
like($x->read_element('db:result'), qr/type='invalid'/,
	'pipelining peer with a forged key refused');
is($x->stream_error(), 'not-authorized',
	'its held stanzas end the stream');
unlike($t->read_file('gateway.log'), qr/heldbad/,
	'held stanzas of a refused key not delivered');

# authoritative server unreachable

$x = partner('deadend.example');
$x->send("<db:result from='deadend.example' to='contoso.example'>"
	. "goodkey</db:result>");
like($x->read_element('db:result', timeout => 8),
	qr/type='error'.*remote-connection-failed/,
	'authoritative server unreachable');

# tls required: dialback before TLS is a policy violation

$x = partner('tls.example');
$x->send("<db:result from='tls.example' to='contoso.example'>k</db:result>");
is($x->stream_error(), 'policy-violation', 'dialback before required TLS');

# dialback off

$x = partner('nodb.example');
$x->send("<db:result from='nodb.example' to='contoso.example'>k</db:result>");
like($x->read_element('db:result'), qr/type='error'.*policy-violation/,
	'dialback off refused');

# the gateway cannot be reached: the partner hears it, nothing is accepted

$x = xmpp(PeerAddr => '127.0.0.1:' . port(8082));
$x->open_stream(from => 'fabrikam.example', to => 'contoso.example', db => 1);
$x->read_element('stream:features');
$x->send("<db:result from='fabrikam.example' to='contoso.example'>"
	. "goodkey</db:result>");
like($x->read_element('db:result', timeout => 8),
	qr/type='error'.*remote-connection-failed/, 'gateway down reported');

# the authoritative role, on the public listener too

$x = partner('fabrikam.example');
$x->send("<db:verify from='fabrikam.example' to='contoso.example' id='S3'>"
	. key('fabrikam.example', 'contoso.example', 'S3') . "</db:verify>");
like($x->read_element('db:verify'), qr/type='valid'/,
	'authoritative role on the public listener');

$x = outbound();
$x->send("<db:verify from='contoso.example' to='fabrikam.example' id='S1'>"
	. key('contoso.example', 'fabrikam.example', 'S1') . "</db:verify>");
like($x->read_element('db:verify'), qr/type='valid'/,
	'key of another edge with the same secret is valid');

$x->send("<db:verify from='contoso.example' to='fabrikam.example' id='S2'>"
	. key('contoso.example', 'fabrikam.example', 'S1') . "</db:verify>");
like($x->read_element('db:verify'), qr/id='S2' type='invalid'/,
	'key bound to its stream id');

$x->send("<db:verify from='contoso.example' to='fabrikam.example' id='a&apos;b'>"
	. "0000</db:verify>");
like($x->read_element('db:verify'), qr/id='a&apos;b' type='invalid'/,
	'forged key invalid, id escaped');

$x->send("<message from='alice\@contoso.example/r' to='bob\@fabrikam.example'"
	. " id='out1'><body>hi</body></message>"
	. "<message from='alice\@contoso.example/r' to='bob\@fabrikam.example'"
	. " type='error' id='out2'/>");
is($x->stream_error(), 'policy-violation',
	'outbound stanza refused until outbound relay exists');
ok(wait_for_log("<message from='bob\@fabrikam.example'"
	. " to='alice\@contoso.example/r' id='out1' type='error'>"
	. "<error type='cancel'><remote-server-not-found"),
	'outbound stanza bounced to its sender through the gateway');
unlike($t->read_file('gateway.log'), qr/out2/, 'errors are not bounced');

# the internal listener verifies the gateway's own key against the gateway

$x = outbound();
$x->send("<db:result from='contoso.example' to='fabrikam.example'>"
	. "gwkey</db:result>");
like($x->read_element('db:result'),
	qr/from='fabrikam.example' to='contoso.example' type='valid'/,
	'gateway key verified against the gateway');

$x->send("<db:result from='contoso.example' to='fabrikam.example'>"
	. "badgwkey</db:result>");
# the pair is already valid: answered valid again
like($x->read_element('db:result'), qr/type='valid'/, 'repeat answered');

$x = outbound();
$x->send("<db:result from='contoso.example' to='fabrikam.example'>"
	. "badgwkey</db:result>");
like($x->read_element('db:result'), qr/type='invalid'/,
	'gateway key refused by the gateway');

# the partner's connection ends, without </stream:stream>, while the
# gateway is slow to read: what was checked before still reaches the
# gateway, and then the end of its stream

$x = authenticated('fabrikam.example', port(8085));
$x->send(join('', map { "<message from='bob\@fabrikam.example'"
	. " to='alice\@contoso.example' id='slow$_'><body>" . ('y' x 900)
	. '</body></message>' } 1 .. 400), timeout => 30);
$x->close();

ok(wait_for_file("$d/gateway-slow.log", "id='slow400'", 30),
	'partner gone, gateway slow: the last stanza arrives');
ok(wait_for_file("$d/gateway-slow.log", "id='slow400'><body>"
	. ('y' x 900) . '</body></message></stream:stream>', 5),
	'partner gone, gateway slow: then the end of the stream');

$t->stop();

like($t->read_file('error.log'), qr/dialback: "fabrikam.example" authenticated/,
	'decision logged');
like($t->read_file('access.log'),
	qr/^fabrikam\.example corp\.fabrikam\.example\|dialback\|\|5$/m,
	'domains, method and stanza count logged');

###############################################################################

sub key {
	my ($recv, $orig, $id) = @_;
	return hmac_sha256_hex("$recv $orig $id", sha256($secret));
}

sub partner {
	my ($from, $port) = @_;
	my $x = xmpp(PeerAddr => '127.0.0.1:' . ($port // port(8080)));
	$x->open_stream(from => $from, to => 'contoso.example', db => 1);
	$x->read_element('stream:features');
	return $x;
}

sub authenticated {
	my $x = partner(@_);
	$x->send("<db:result from='$_[0]' to='contoso.example'>"
		. "goodkey</db:result>");
	$x->read_element('db:result');
	return $x;
}

sub outbound {
	my $x = xmpp(PeerAddr => '127.0.0.1:' . port(8081));
	$x->open_stream(from => 'contoso.example', to => 'fabrikam.example',
		db => 1);
	$x->read_element('stream:features');
	return $x;
}

sub wait_for_log {
	my ($what) = @_;
	for (1 .. 50) {
		my $log = eval { $t->read_file('gateway.log') } // '';
		return 1 if index($log, $what) >= 0;
		select undef, undef, undef, 0.1;
	}
	return 0;
}

###############################################################################
