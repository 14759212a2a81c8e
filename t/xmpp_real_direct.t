#!/usr/bin/perl

# The real-server test infrastructure, without nginx in the path: a world
# DNS view (dnsmasq) with SRV records, the gateway (Prosody,
# contoso.example, alice) and partners (Prosody, fabrikam.example, bob;
# ejabberd, litware.example, carol) resolving through it, federating
# directly with server dialback over plain TCP; real clients (slixmpp) send
# and receive. Later suites put the edge between the servers.

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use Time::HiRes qw/ time /;

use Test::Nginx qw/ port /;
use Test::XMPP::Servers;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $t = Test::Nginx->new()->has_daemon('prosody')->has_daemon('dnsmasq');
Test::XMPP::Servers->has(qw/ prosody dnsmasq slixmpp /);

$t->plan(19);

###############################################################################

my $start = time();
my $xs = Test::XMPP::Servers->new($t);

my ($gw_s2s, $gw_c2s, $pt_s2s, $pt_c2s, $ej_s2s, $ej_c2s)
	= map { port($_) } 8101 .. 8106;

# ejabberd resolves SRV targets with getaddrinfo(), not through its DNS:
# the record it looks up (contoso.example) names 127.0.0.1 itself

my $world = $xs->dnsmasq(name => 'world', records => [
	[ xmpp => 'contoso.example', $gw_s2s, '127.0.0.1' ],
	[ xmpp => 'fabrikam.example', $pt_s2s ],
	[ xmpp => 'litware.example', $ej_s2s ],
]);

ok($world->alive(), 'world dns started');

SKIP: {
	eval { require Net::DNS; 1 } or skip 'no Net::DNS', 1;

	my $r = Net::DNS::Resolver->new(nameservers => [ '127.0.0.1' ],
		port => $world->port(), recurse => 1, udp_timeout => 3,
		retry => 1);
	my $p = $r->send('_xmpp-server._tcp.fabrikam.example', 'SRV');
	my ($srv) = $p ? grep { $_->type eq 'SRV' } $p->answer : ();

	is($srv && $srv->target . ':' . $srv->port,
		"xmpp.fabrikam.example:$pt_s2s", 'world dns srv');
}

my $gw = $xs->prosody(name => 'gateway', domain => 'contoso.example',
	port => $gw_s2s, c2s_port => $gw_c2s, dns => $world->port(),
	users => { alice => 'alice-pw' });

my $pt = $xs->prosody(name => 'partner', domain => 'fabrikam.example',
	port => $pt_s2s, c2s_port => $pt_c2s, dns => $world->port(),
	users => { bob => 'bob-pw' });

ok($gw->alive() && $pt->alive(), 'gateway and partner started');

note(sprintf('servers up in %.2f s', time() - $start));

# inbound direction: bob (partner) to alice (gateway), alice offline

my $sent = time();

my $r = $xs->send_message(from_jid => 'bob@fabrikam.example',
	password => 'bob-pw', c2s => $pt->c2s, to => 'alice@contoso.example',
	body => 'hello alice');

ok($r->{ok}, 'bob sent') or diag(explain($r));

my @off = $gw->wait_offline('alice', 1, 10);
is($off[0] && $off[0]{body}, 'hello alice', 'stored offline on the gateway');

note(sprintf('s2s delivery in %.2f s', time() - $sent));

like($gw->log(),
	qr/Incoming s2s connection fabrikam\.example->contoso\.example complete/,
	'gateway authenticated the partner by dialback');

like($world->log(), qr/query\[SRV\] _xmpp-server\._tcp\.fabrikam\.example/,
	'gateway resolved the partner through the world dns');

my $m = $xs->receive_message(jid => 'alice@contoso.example',
	password => 'alice-pw', c2s => $gw->c2s, timeout => 10);

is($m && $m->{body}, 'hello alice', 'alice received the message');
is($m && $m->{from} =~ s!/.*!!r, 'bob@fabrikam.example', 'from bob');

# outbound direction: alice to bob, bob online

my $bob = $xs->receiver(jid => 'bob@fabrikam.example', password => 'bob-pw',
	c2s => $pt->c2s);

$r = $xs->send_message(from_jid => 'alice@contoso.example',
	password => 'alice-pw', c2s => $gw->c2s, to => 'bob@fabrikam.example',
	body => 'hello bob');

ok($r->{ok}, 'alice sent');

my @got = $bob->wait_for(1, 10);
is($got[0] && $got[0]{body}, 'hello bob', 'bob received the message online');
ok($got[0] && !$got[0]{delayed}, 'not delayed');

# wrong password: the client reports it

$r = $xs->send_message(from_jid => 'bob@fabrikam.example',
	password => 'wrong', c2s => $pt->c2s, to => 'alice@contoso.example',
	body => 'never');

is($r->{status}, 2, 'wrong password refused');

# an ejabberd partner: carol to alice (offline), alice to carol (offline)

my $ej;

SKIP: {
	my $missing = Test::XMPP::Servers->missing('ejabberd');
	skip($missing, 5) if $missing;

	$ej = $xs->ejabberd(name => 'litware', domain => 'litware.example',
		port => $ej_s2s, c2s_port => $ej_c2s, dns => $world->port(),
		users => { carol => 'carol-pw' });

	$r = $xs->send_message(from_jid => 'carol@litware.example',
		password => 'carol-pw', c2s => $ej->c2s,
		to => 'alice@contoso.example', body => 'hello from ejabberd');

	ok($r->{ok}, 'carol sent') or diag(explain($r));

	@off = $gw->wait_offline('alice', 1, 10);
	is($off[0] && $off[0]{body}, 'hello from ejabberd',
		'ejabberd to prosody');

	$r = $xs->send_message(from_jid => 'alice@contoso.example',
		password => 'alice-pw', c2s => $gw->c2s,
		to => 'carol@litware.example', body => 'hello carol');

	ok($r->{ok}, 'alice sent to carol');
	is($ej->wait_offline('carol', 1, 10), 1, 'stored offline on ejabberd');

	$m = $xs->receive_message(jid => 'carol@litware.example',
		password => 'carol-pw', c2s => $ej->c2s, timeout => 10);

	is($m && $m->{body}, 'hello carol', 'prosody to ejabberd');
}

# everything stops

my @pids = grep { defined } map { $_ && $_->pid } $world, $gw, $pt, $bob,
	$ej;
$xs->stop_all();

is(scalar(grep { kill(0, $_) } @pids), 0, 'all stopped');

note(sprintf('total %.2f s', time() - $start));

###############################################################################
