#!/usr/bin/perl

# Inbound federation end to end with real servers: a partner Prosody
# (fabrikam.example, corp.fabrikam.example) federates by server dialback
# through the edge with a gateway Prosody (contoso.example). Split-horizon
# DNS from two dnsmasq instances: in the world's view contoso.example is
# the edge's public listener; in the gateway's view the partner domains are
# the edge's internal listener. Real clients (slixmpp) send and receive.

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::Nginx qw/ port /;
use Test::Nginx::XMPP qw/ xmpp /;
use Test::XMPP::Peers qw/ authoritative /;
use Test::XMPP::Servers;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has(qw/stream xmpp_federation/)
	->has_daemon('prosody')->has_daemon('dnsmasq');
Test::XMPP::Servers->has(qw/ prosody dnsmasq slixmpp /);

my $xs = Test::XMPP::Servers->new($t);

my %p = map { $_ => Test::XMPP::Servers::free_port() }
	qw/ gw_s2s gw_c2s pt_s2s pt_c2s un_s2s un_c2s dns_world dns_gw /;

# the edge's two listeners come from the harness

my ($edge_public, $edge_internal) = (port(8080), port(8081));

$t->write_file_expand('nginx.conf', <<"EOF");

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    resolver 127.0.0.1:$p{dns_world} ipv6=off;

    log_format xmpp '\$xmpp_from|\$xmpp_to|\$xmpp_partner|\$xmpp_stream_error';
    access_log %%TESTDIR%%/access.log xmpp;

    xmpp_federation_local_domains contoso.example;
    xmpp_federation_dialback_secret "real servers test";

    xmpp_federation_partner fabrikam.example {
        additional_domains corp.fabrikam.example;
        type federated;
        tls not_supported;
        sasl not_supported;
        dialback on;
    }

    # scripted partner streams, to the keepalive server below
    xmpp_federation_partner litware.example {
        tls not_supported;
        sasl not_supported;
        server 127.0.0.1:%%PORT_8090%%;
    }

    server {
        listen 127.0.0.1:%%PORT_8082%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:$p{gw_s2s};
        xmpp_federation_pass_keepalive 4;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:$p{gw_s2s};
    }

    server {
        listen 127.0.0.1:%%PORT_8081%%;
        allow 127.0.0.1;
        deny all;
        xmpp_federation outbound;
        xmpp_federation_pass 127.0.0.1:$p{gw_s2s};
    }
}

EOF

my $world = $xs->dnsmasq(name => 'world', port => $p{dns_world}, xmpp => {
	'contoso.example' => $edge_public,
	'fabrikam.example' => $p{pt_s2s},
	'corp.fabrikam.example' => $p{pt_s2s},
	'unlisted.example' => $p{un_s2s},
});

my $gwdns = $xs->dnsmasq(name => 'gateway', port => $p{dns_gw}, xmpp => {
	'contoso.example' => $p{gw_s2s},
	'fabrikam.example' => $edge_internal,
	'corp.fabrikam.example' => $edge_internal,
	'unlisted.example' => $edge_internal,
	'litware.example' => $edge_internal,
});

$t->try_run('no xmpp_federation')->plan(17);

my $gw = $xs->prosody(name => 'gateway', domain => 'contoso.example',
	port => $p{gw_s2s}, c2s_port => $p{gw_c2s}, dns => $gwdns->port(),
	users => { alice => 'alice-pw' });

my $pt = $xs->prosody(name => 'partner',
	domains => [ 'fabrikam.example', 'corp.fabrikam.example' ],
	port => $p{pt_s2s}, c2s_port => $p{pt_c2s}, dns => $world->port(),
	users => { bob => 'bob-pw', 'eve@corp.fabrikam.example' => 'eve-pw' });

my $un = $xs->prosody(name => 'unlisted', domain => 'unlisted.example',
	port => $p{un_s2s}, c2s_port => $p{un_c2s}, dns => $world->port(),
	users => { mallory => 'mallory-pw' });

# litware's authoritative server, scripted; forked once the servers hold
# their ports (a child would keep the reservations of the ports open)

$t->run_daemon(\&authoritative, port(8090));
$t->waitforsocket('127.0.0.1:' . port(8090));

###############################################################################

my $alice = $xs->receiver(jid => 'alice@contoso.example',
	password => 'alice-pw', c2s => $gw->c2s);

# the partner's user writes to ours: through the edge, by dialback

my $r = $xs->send_message(from_jid => 'bob@fabrikam.example',
	password => 'bob-pw', c2s => $pt->c2s, to => 'alice@contoso.example',
	body => 'hello alice, from fabrikam');
ok($r->{ok}, 'bob sent') or diag(explain($r));

my @got = $alice->wait_for(1, 15);
is($got[0] && $got[0]{body}, 'hello alice, from fabrikam',
	'alice received the message through the edge');
is($got[0] && $got[0]{from} =~ s!/.*!!r, 'bob@fabrikam.example', 'from bob');

like($gw->log(),
	qr/Incoming s2s connection fabrikam\.example->contoso\.example complete/,
	'gateway accepted the edge\'s vouching');
like($gwdns->log(), qr/query\[SRV\] _xmpp-server\._tcp\.fabrikam\.example/,
	'gateway verified the partner domain in its own view');
like($world->log(), qr/query\[SRV\] _xmpp-server\._tcp\.fabrikam\.example/,
	'edge found the authoritative server through the resolver');

# an additional domain of the partner

$r = $xs->send_message(from_jid => 'eve@corp.fabrikam.example',
	password => 'eve-pw', c2s => $pt->c2s, to => 'alice@contoso.example',
	body => 'hello from corp');

@got = $alice->wait_for(2, 15);
is($got[1] && $got[1]{body}, 'hello from corp', 'additional domain works');

# an unlisted domain never reaches the gateway: its server bounces

$r = $xs->send_message(from_jid => 'mallory@unlisted.example',
	password => 'mallory-pw', c2s => $un->c2s,
	to => 'alice@contoso.example', body => 'let me in', wait => 5);

is($r->{status}, 3, 'unlisted domain: the sender gets an error')
	or diag(explain($r));
unlike($gw->log(), qr/unlisted\.example->contoso\.example/,
	'unlisted domain: no stream at the gateway');
@got = $alice->wait_for(3, 1);
is(scalar(@got), 2, 'unlisted domain: nothing delivered');

# xmpp_federation_pass_keepalive: two partner streams one after the
# other, the second on the gateway stream of the first: Prosody takes it

for my $n (1, 2) {
	my $x = xmpp(PeerAddr => '127.0.0.1:' . port(8082));
	$x->open_stream(from => 'litware.example', to => 'contoso.example',
		db => 1);
	$x->read_element('stream:features');
	$x->send("<db:result from='litware.example' to='contoso.example'>"
		. "goodkey</db:result>");
	$x->read_element('db:result');
	$x->send("<message from='dan\@litware.example'"
		. " to='alice\@contoso.example' type='chat' id='lw$n'>"
		. "<body>litware $n</body></message></stream:stream>");
	$x->read_until(qr{</stream:stream>});
	$x->close();
	$alice->wait_for(2 + $n, 15);
}

@got = $alice->wait_for(4, 1);
is(join(',', map { $_->{body} } @got[2 .. 3]), 'litware 1,litware 2',
	'keepalive: both messages delivered');
my @in = $gw->log() =~
	/Incoming s2s connection litware\.example->contoso\.example complete/g;
is(scalar(@in), 1, 'keepalive: one gateway stream for both');
like($t->read_file('error.log'),
	qr/gateway stream from "litware.example" to "contoso.example" reused/,
	'keepalive: stream reused');

# our user answers: the edge has no outbound relay yet, the gateway
# gets the message back as an error instead of losing it

$r = $xs->send_message(from_jid => 'alice@contoso.example',
	password => 'alice-pw', c2s => $gw->c2s, to => 'bob@fabrikam.example',
	body => 'hello bob', wait => 5);

is($r->{error} && $r->{error}{condition}, 'remote-server-not-found',
	'outbound message bounced to its sender');

# the gateway is down: the partner's server hears it and bounces

$alice->stop();
$gw->stop();

$r = $xs->send_message(from_jid => 'bob@fabrikam.example',
	password => 'bob-pw', c2s => $pt->c2s, to => 'alice@contoso.example',
	body => 'is anybody there', wait => 8);

is($r->{status}, 3, 'gateway down: the sender gets an error, not silence')
	or diag(explain($r));

$xs->stop_all();
$t->stop();

like($t->read_file('error.log'), qr/gateway .*connect\(\) failed|no more gateway/,
	'gateway down logged');
like($t->read_file('access.log'),
	qr/^fabrikam\.example\|contoso\.example\|fabrikam\.example\|/m,
	'partner stream logged');

###############################################################################
