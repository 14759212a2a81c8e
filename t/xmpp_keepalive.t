#!/usr/bin/perl

# xmpp_federation_pass_keepalive: a partner stream that ends cleanly leaves
# its gateway stream, with the domains the gateway accepted on it, for the
# next stream of the same domains: no new connection, no second dialback
# check by the gateway.  Streams that end in an error are not kept; kept
# streams end on their timeout, when the cache is full, when the gateway
# ends them, and when the worker exits.  Scripted partner, authoritative
# server and gateway (t/lib/Test/XMPP/Peers.pm).

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::Nginx qw/ port scaled /;
use Test::Nginx::XMPP qw/ xmpp /;
use Test::XMPP::Peers qw/ authoritative gateway wait_for_file /;

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
    xmpp_federation_dialback_secret "a secret for the keepalive tests";

    xmpp_federation_partner fabrikam.example {
        additional_domains corp.fabrikam.example;
        tls not_supported;
        sasl not_supported;
        dialback on;
        server 127.0.0.1:%%PORT_8090%%;
    }

    # the internal listener, where every gateway checks the edge's keys
    server {
        listen 127.0.0.1:%%PORT_8081%%;
        xmpp_federation outbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        xmpp_federation_pass_keepalive 4;
    }

    server {
        listen 127.0.0.1:%%PORT_8082%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8092%%;
        xmpp_federation_pass_keepalive 1;
        xmpp_federation_pass_keepalive_timeout 2s;
    }

    server {
        listen 127.0.0.1:%%PORT_8083%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8093%%;
        xmpp_federation_pass_keepalive 4;
    }

    server {
        listen 127.0.0.1:%%PORT_8084%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8094%%;
    }
}

EOF

my $d = $t->testdir();
my $edge_out = port(8081);

$t->run_daemon(\&authoritative, port(8090));
$t->run_daemon(\&gateway, port(8091), $edge_out, "$d/gw1.log");
$t->run_daemon(\&gateway, port(8092), $edge_out, "$d/gw2.log");
$t->run_daemon(\&gateway, port(8093), $edge_out, "$d/gw3.log",
	end_on => "id='bye'");
$t->run_daemon(\&gateway, port(8094), $edge_out, "$d/gw4.log");
$t->try_run('no xmpp_federation_pass_keepalive')->plan(28);

$t->waitforsocket('127.0.0.1:' . port($_)) for 8090 .. 8094;

###############################################################################

# two partner streams one after the other: one gateway stream, one check

session(8080, 'fabrikam.example', 'm1');
ok(wait_for_file("$d/gw1.log", "id='m1'"), 'first stanza delivered');

session(8080, 'fabrikam.example', 'm2');
ok(wait_for_file("$d/gw1.log", "id='m2'"), 'second stanza delivered');

my $log = $t->read_file('gw1.log');
is(count($log, '<stream:stream '), 1, 'one gateway stream for both');
is(count($log, 'VERIFY valid fabrikam.example'), 1,
	'the gateway checked the edge once');
is(count($log, '</stream:stream>'), 0, 'the gateway stream stays open');
like($t->read_file('error.log'),
	qr/gateway accepted "fabrikam.example" for "contoso.example" on a kept/,
	'second domain accepted on the kept stream');

# a domain the kept stream was not opened for: a stream of its own

session(8080, 'corp.fabrikam.example', 'c1');
ok(wait_for_file("$d/gw1.log", "id='c1'"), 'additional domain delivered');

$log = $t->read_file('gw1.log');
is(count($log, '<stream:stream '), 2, 'additional domain: a new stream');
like($log, qr/<stream:stream [^>]*from='corp.fabrikam.example'/,
	'new stream from the additional domain');

# a second domain vouched on a kept stream, then kept with it

my $x = authenticated(8080, 'fabrikam.example');
$x->send("<db:result from='corp.fabrikam.example' to='contoso.example'>"
	. "goodkey</db:result>");
like($x->read_element('db:result'), qr/type='valid'/,
	'second domain on a kept stream');
$x->send("<message from='a\@corp.fabrikam.example'"
	. " to='alice\@contoso.example' id='m3'/>");
end($x);
ok(wait_for_file("$d/gw1.log", "id='m3'"), 'its stanza delivered');

$log = $t->read_file('gw1.log');
is(count($log, 'VERIFY valid corp.fabrikam.example'), 2,
	'the gateway checked it on the kept stream');
is(count($log, '<stream:stream '), 2, 'still two gateway streams');

# a stream that ends in an error takes its gateway stream with it: the
# stanzas checked before the error go, then the end

$x = authenticated(8080, 'fabrikam.example');
$x->send("<message from='bob\@fabrikam.example' to='alice\@contoso.example'"
	. " id='m4'/><message from='eve\@evil.example'"
	. " to='alice\@contoso.example' id='spoof'/>");
is($x->stream_error(), 'invalid-from', 'spoofed from: stream error');
ok(wait_for_file("$d/gw1.log", "id='m4'"), 'checked stanza delivered');
ok(wait_for_file("$d/gw1.log", "</stream:stream>"),
	'gateway stream ended after the error');
unlike($t->read_file('gw1.log'), qr/spoof/, 'spoofed stanza not delivered');

session(8080, 'fabrikam.example', 'm5');
ok(wait_for_file("$d/gw1.log", "id='m5'"), 'next stanza delivered');
is(count($t->read_file('gw1.log'), '<stream:stream '), 3,
	'a new gateway stream after the error');

# one stream kept at most: the older one ends; then the timeout ends the
# other

my $a = authenticated(8082, 'fabrikam.example');
my $b = authenticated(8082, 'fabrikam.example');
message($a, 'a1');
message($b, 'b1');
ok(wait_for_file("$d/gw2.log", "id='b1'"), 'two streams at once');
end($a);
end($b);
ok(wait_for_file("$d/gw2.log", "</stream:stream>"), 'cache full: one ends');
is(count($t->read_file('gw2.log'), '</stream:stream>'), 1,
	'cache full: the other is kept');
ok(wait_until(sub { count($t->read_file('gw2.log'), '</stream:stream>')
	== 2 }, 5), 'kept stream ends on its timeout');

# the gateway ends a kept stream: the next partner stream gets a new one

session(8083, 'fabrikam.example', 'bye');
ok(wait_until(sub { count($t->read_file('gw3.log'), '</stream:stream>')
	>= 1 }, 4), 'gateway ended the kept stream');
session(8083, 'fabrikam.example', 'g2');
ok(wait_for_file("$d/gw3.log", "id='g2'"), 'stanza after the gateway end');
is(count($t->read_file('gw3.log'), '<stream:stream '), 2,
	'a new stream after the gateway ended the kept one');

# without the directive the gateway stream ends with the partner's

session(8084, 'fabrikam.example', 'n1');
ok(wait_for_file("$d/gw4.log", "</stream:stream>"),
	'no keepalive: gateway stream ends');

# the worker exits: kept streams end

kill 'QUIT', $t->read_file('nginx.pid') =~ /(\d+)/;
ok(wait_until(sub { count($t->read_file('gw1.log'), '</stream:stream>')
	>= 3 }, 8), 'kept streams end when nginx quits');

###############################################################################

sub count {
	my ($text, $what) = @_;
	my $n = () = $text =~ /\Q$what\E/g;
	return $n;
}

sub wait_until {
	my ($cond, $secs) = @_;
	for (1 .. 10 * scaled($secs)) {
		return 1 if $cond->();
		select undef, undef, undef, 0.1;
	}
	return 0;
}

sub authenticated {
	my ($port, $from) = @_;
	my $x = xmpp(PeerAddr => '127.0.0.1:' . port($port));
	$x->open_stream(from => $from, to => 'contoso.example', db => 1);
	$x->read_element('stream:features');
	$x->send("<db:result from='$from' to='contoso.example'>"
		. "goodkey</db:result>");
	my $r = $x->read_element('db:result') // '';
	die "$from not authenticated: $r\n" unless $r =~ /type='valid'/;
	$x->{from} = $from;
	return $x;
}

sub message {
	my ($x, $id) = @_;
	$x->send("<message from='bob\@$x->{from}'"
		. " to='alice\@contoso.example' id='$id'><body>$id</body>"
		. "</message>");
}

sub end {
	my ($x) = @_;
	$x->send('</stream:stream>');
	$x->read_until(qr{</stream:stream>});
	$x->close();
}

sub session {
	my ($port, $from, $id) = @_;
	my $x = authenticated($port, $from);
	message($x, $id);
	end($x);
}

###############################################################################
