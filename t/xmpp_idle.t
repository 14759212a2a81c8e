#!/usr/bin/perl

# Idle streams give their memory back: once a relayed stream has nothing
# under way, the edge frees its input and output buffers and its parsers
# (the partner's stream and the gateway's), and brings them back with the
# next bytes, expat reading the partner's stream header again.  Stanzas
# after idle gaps, prefixes declared in the header, stanzas split across
# gaps, dialback and the end of the stream after a gap, and stanzas that
# are refused after a gap.

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::Nginx;
use Test::Nginx::XMPP qw/ xmpp /;
use Test::XMPP::Peers qw/ authoritative gateway /;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has(qw/stream xmpp_federation/);

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    xmpp_federation_local_domains contoso.example;
    xmpp_federation_dialback_secret "a long random secret for the tests";

    xmpp_federation_partner fabrikam.example {
        additional_domains corp.fabrikam.example;
        type federated;
        tls not_supported;
        sasl not_supported;
        dialback on;
        server 127.0.0.1:%%PORT_8090%%;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        xmpp_federation_max_stanza_size 4k;
    }

    server {
        listen 127.0.0.1:%%PORT_8082%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        xmpp_federation_buffer_size 1k;
    }

    server {
        listen 127.0.0.1:%%PORT_8081%%;
        xmpp_federation outbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
    }
}

EOF

my $d = $t->testdir();

$t->run_daemon(\&authoritative, port(8090));
$t->run_daemon(\&gateway, port(8091), port(8081), "$d/gateway.log");
$t->try_run('no xmpp_federation')->plan(34);

$t->waitforsocket('127.0.0.1:' . port(8090));
$t->waitforsocket('127.0.0.1:' . port(8091));

###############################################################################

my $X = "xmlns:x='urn:example:x'";

# a stanza, then the stream idles: both sides release their memory

my $x = authenticated(extra => $X);
my $id = stream_id();

my $m1 = stanza('m1', '<body>before the gap</body>');
put($x, $m1);
ok(wait_for_log($m1), 'stanza relayed');

my $debug = debug_log();

SKIP: {
skip 'no debug log', 2 unless $debug;

ok(wait_released($x, $id), 'idle partner stream released its memory');
ok(wait_count($id, qr/xmpp peer: idle, memory released/, 1),
	'idle gateway stream released its memory');

}

# the next stanzas: new buffers, and the same stream to the gateway

my $m2 = stanza('m2', '<body>after the gap &amp; more</body>');
put($x, $m2);
ok(wait_for_log($m1 . $m2), 'stanza after an idle gap relayed byte-exact');
wait_released($x, $id);

# whitespace keepalives are part of the stream

my $m3 = stanza('m3', '<body>after a keepalive</body>');
put($x, " \n ");
wait_released($x, $id);
put($x, $m3);
ok(wait_for_log($m1 . $m2 . " \n " . $m3),
	'keepalive and stanza after idle gaps relayed byte-exact');
wait_released($x, $id);

# expat comes back for a prefix, with the header's declarations

my $m4 = stanza('m4', '<x:data a=\'1\'>prefixed</x:data>');
put($x, $m4);
ok(wait_for_log($m3 . $m4),
	'prefix declared in the header still bound after an idle gap');
like($t->read_file('gateway.log'),
	qr/<stream:stream [^>]*xmlns:x='urn:example:x'/,
	'prefix declared to the gateway');
wait_released($x, $id);

# a stanza split across an idle gap, scanned and with expat

my $m5 = stanza('m5', '<body>split across a gap</body>');
put($x, substr($m5, 0, 50));
select undef, undef, undef, 0.3;
put($x, substr($m5, 50));
ok(wait_for_log($m4 . $m5), 'stanza split across a gap relayed byte-exact');
wait_released($x, $id);

my $m6 = stanza('m6', '<x:data>prefixed, split</x:data>');
put($x, substr($m6, 0, index($m6, 'split')));
select undef, undef, undef, 0.3;
put($x, substr($m6, index($m6, 'split')));
ok(wait_for_log($m5 . $m6), 'prefixed stanza split across a gap relayed');
wait_released($x, $id);

my $m7 = stanza('m7', '<body>tag split</body>');
put($x, substr($m7, 0, 20));
select undef, undef, undef, 0.3;
put($x, substr($m7, 20));
ok(wait_for_log($m6 . $m7), 'start tag split across a gap relayed');
wait_released($x, $id);

# the end of the stream after a gap, both ways

put($x, '</stream:stream>');
ok($x->read_until(qr{</stream:stream>}), 'end of stream after a gap answered');
ok($x->closed(), 'closed after the end of stream');
ok(wait_for_log($m7 . '</stream:stream>'),
	'end of stream after a gap relayed to the gateway');

# an undeclared prefix after a gap: expat, woken, knows the header's only

$x = authenticated(extra => $X);
$id = stream_id();

my $u1 = stanza('u1', '<x:data/>');
put($x, $u1);
ok(wait_for_log($u1), 'prefixed stanza relayed');
wait_released($x, $id);

put($x, stanza('u2', '<y:data/>'));
is($x->stream_error(), 'not-well-formed', 'undeclared prefix after a gap');
unlike($t->read_file('gateway.log'), qr/id='u2'/,
	'stanza with an undeclared prefix not relayed');

# dialback after a gap: another domain on the stream, the gateway's
# stream wakes for its answer

$x = authenticated();
$id = stream_id();

my $c1 = stanza('c1', '');
put($x, $c1);
ok(wait_for_log($c1), 'stanza before dialback relayed');
wait_released($x, $id);

put($x, "<db:result from='corp.fabrikam.example' to='contoso.example'>"
	. "goodkey</db:result>");
like($x->read_element('db:result'),
	qr/from='contoso.example' to='corp.fabrikam.example' type='valid'/,
	'dialback for another domain after a gap');

my $c2 = stanza('c2', '<body>from corp</body>', 'eve@corp.fabrikam.example');
put($x, $c2);
ok(wait_for_log($c2), 'stanza of the new domain relayed');
wait_released($x, $id);

my $c3 = stanza('c3', '<body>again</body>');
put($x, $c3);
ok(wait_for_log($c3), 'stanza after the gateway stream idled relayed');

# refused after a gap: nothing of the stanza goes on

$x = authenticated();
$id = stream_id();

my $p1 = stanza('p1', '');
put($x, $p1);
ok(wait_for_log($p1), 'stanza before the spoofed one relayed');
wait_released($x, $id);

put($x, stanza('spoof1', '', 'mallory@litware.example'));
is($x->stream_error(), 'invalid-from', 'spoofed from after a gap refused');
unlike($t->read_file('gateway.log'), qr/spoof1/,
	'spoofed stanza after a gap not relayed');

$x = authenticated();
$id = stream_id();

my $p2 = stanza('p2', '');
put($x, $p2);
ok(wait_for_log($p2), 'stanza before the foreign one relayed');
wait_released($x, $id);

put($x, "<message from='bob\@fabrikam.example' to='x\@elsewhere.example'"
	. " id='foreign1'/>");
is($x->stream_error(), 'improper-addressing',
	'stanza to a foreign domain after a gap refused');

$x = authenticated();
$id = stream_id();

my $p3 = stanza('p3', '');
put($x, $p3);
ok(wait_for_log($p3), 'stanza before the large one relayed');
wait_released($x, $id);

put($x, stanza('large1', '<body>' . ('z' x 5000) . '</body>'));
is($x->stream_error(), 'policy-violation',
	'stanza over the size limit after a gap refused');
unlike($t->read_file('gateway.log'), qr/large1/,
	'stanza over the size limit not relayed');

# a small buffer: grown for a large stanza after a gap, released again

$x = authenticated(port => port(8082));
$id = stream_id();

my $b1 = stanza('b1', '');
put($x, $b1);
ok(wait_for_log($b1), 'small buffer: stanza relayed');
wait_released($x, $id);

my $b2 = stanza('b2', '<body>' . ('a' x 300) . '</body>');
my $b3 = stanza('b3', '<body>' . ('b' x 3000) . '</body>');
put($x, $b2 . $b3);
ok(wait_for_log($b1 . $b2 . $b3),
	'small buffer: stanzas larger than the buffer after a gap relayed');

SKIP: {
skip 'no debug log', 1 unless $debug;

ok(wait_released($x, $id), 'small buffer: grown buffer released');

}

my $b4 = stanza('b4', '<body>' . ('c' x 2000) . '</body>');
put($x, substr($b4, 0, 700));
select undef, undef, undef, 0.3;
put($x, substr($b4, 700));
ok(wait_for_log($b3 . $b4),
	'small buffer: large stanza split across a gap relayed');

put($x, '</stream:stream>');
ok($x->read_until(qr{</stream:stream>}), 'small buffer: end of stream');

$t->stop();

SKIP: {
skip 'no debug log', 1 unless $debug;

like($t->read_file('error.log'), qr/xmpp parser: awake/,
	'expat read the kept header again');

}

###############################################################################

# a message from bob (or $from) to alice, its content as given

sub stanza {
	my ($id, $content, $from) = @_;
	$from //= 'bob@fabrikam.example';
	return "<message from='$from' to='alice\@contoso.example' id='$id'>"
		. "$content</message>";
}

sub authenticated {
	my (%o) = @_;
	my $port = delete $o{port} // port(8080);
	my $x = xmpp(PeerAddr => "127.0.0.1:$port");
	put($x, $x->header(from => 'fabrikam.example', to => 'contoso.example',
		db => 1, %o));
	$x->read_element('stream:features');
	put($x, "<db:result from='fabrikam.example' to='contoso.example'>"
		. "goodkey</db:result>");
	$x->read_element('db:result');
	return $x;
}

# sends, and counts the bytes of the stream

sub put {
	my ($x, $data) = @_;
	$x->{_sent} = ($x->{_sent} // 0) + length $data;
	return $x->send($data);
}

# the connection number of the stream last handed to the gateway

sub stream_id {
	my @ids = $t->read_file('error.log')
		=~ /\*(\d+) XMPP stream of partner "[^"]*" handed to the gateway/g;
	return $ids[-1];
}

# whether the edge's debug log says what the module does

sub debug_log {
	return $t->read_file('error.log') =~ /\[debug\].* xmpp /;
}

sub wait_count {
	my ($id, $re, $n) = @_;
	for (1 .. 50) {
		my @l = grep { /\*$id / && $_ =~ $re }
			split /\n/, $t->read_file('error.log');
		return 1 if @l >= $n;
		select undef, undef, undef, 0.1;
	}
	return 0;
}

# the partner's stream released its memory after all that was sent on it
# (the edge logs the stream offset); without a debug log, a pause

sub wait_released {
	my ($x, $id) = @_;
	if (!$debug) {
		select undef, undef, undef, 0.3;
		return 1;
	}
	my $at = $x->{_sent};
	return wait_count($id,
		qr/xmpp idle: buffers and parser released at $at(?!\d)/, 1);
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
