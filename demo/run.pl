#!/usr/bin/perl

# Demo: two real XMPP deployments federating on loopback.
#
#   contoso.example   the gateway (Prosody), user alice
#   fabrikam.example  a partner (Prosody), user bob
#
# bob sends alice a message (inbound), alice answers (outbound); real
# clients (slixmpp) log in, send and receive. Two DNS views (dnsmasq) make
# the split horizon that the edge needs:
#
#   world view    (the partner resolves through it)
#       contoso.example  -> the edge's public listener  (direct: gateway)
#       fabrikam.example -> the partner
#   gateway view  (the gateway resolves through it)
#       fabrikam.example -> the edge's internal listener (direct: partner)
#       contoso.example  -> the gateway
#
# The edge (nginx with the module, built by make) sits between them;
# --no-edge lets the two servers federate directly, through the same views.
#
#   perl demo/run.pl [--keep] [--dir DIR] [--verbose]
#                    [--gateway prosody|ejabberd] [--partner prosody|ejabberd]
#
#   --keep     leave everything running until ^C (log in with any client:
#              alice / alice-pw at the gateway's c2s port, bob / bob-pw at
#              the partner's, plain TCP)
#   --dir DIR  work directory (default: a new one in /tmp, kept)
#   --gateway, --partner   which server plays the role (default prosody)

use warnings;
use strict;

use FindBin;
use lib "$FindBin::Bin/../t/lib";

use File::Temp qw/ tempdir /;
use Getopt::Long;
use Time::HiRes qw/ time sleep /;

use Test::XMPP::Servers;

###############################################################################

$| = 1;

my %opt = (dir => undef, keep => 0, verbose => 0, gateway => 'prosody',
	partner => 'prosody');
GetOptions(\%opt, 'dir=s', 'keep!', 'verbose!', 'gateway=s', 'partner=s',
	'no-edge!')
	or die "usage: see the top of $0\n";

for my $kind ($opt{gateway}, $opt{partner}) {
	die "demo: --gateway/--partner: prosody or ejabberd\n"
		unless $kind =~ /^(prosody|ejabberd)$/;
}

if (my $m = Test::XMPP::Servers->missing(qw/ dnsmasq slixmpp /,
	$opt{gateway}, $opt{partner}))
{
	die "demo: $m (make deps)\n";
}

my $dir = $opt{dir} // tempdir('xmpp-demo-XXXXXXXX', TMPDIR => 1);
chmod(0755, $dir);

my $t0 = time();

sub say_ {
	printf("[%5.2f] %s\n", time() - $t0, join('', @_));
}

my $xs = Test::XMPP::Servers->new(dir => $dir, verbose => $opt{verbose});

my %dom = (local => 'contoso.example', partner => 'fabrikam.example');

my %user = (
	alice => { jid => "alice\@$dom{local}", password => 'alice-pw' },
	bob => { jid => "bob\@$dom{partner}", password => 'bob-pw' },
);

# every port up front, so the DNS views and the edge's config can name them

my %port = map { $_ => Test::XMPP::Servers::free_port() }
	qw/ gateway_s2s gateway_c2s partner_s2s partner_c2s
	    edge_public edge_internal dns_world dns_gateway /;

###############################################################################

# the edge: nginx with the module between the two servers
#
# To wire it in: start nginx here with
#     resolver 127.0.0.1:$port{dns_world};
#     xmpp_federation_local_domains contoso.example;
#     xmpp_federation_partner fabrikam.example { ... }
#     server { listen 127.0.0.1:$port{edge_public}; xmpp_federation inbound;
#              xmpp_federation_pass 127.0.0.1:$port{gateway_s2s}; }
#     server { listen 127.0.0.1:$port{edge_internal};
#              xmpp_federation outbound;
#              xmpp_federation_pass 127.0.0.1:$port{gateway_s2s}; }
# (free_port() keeps every port above reserved: release the edge's two
# with Test::XMPP::Servers::release($port{edge_public},
# $port{edge_internal}) just before nginx starts) and return a true value;
# the DNS views below then point at the edge.

my %edge = (
	nginx => $ENV{DEMO_NGINX} // '/usr/sbin/nginx',
	stream => $ENV{DEMO_STREAM_MODULE}
		// '/usr/lib/nginx/modules/ngx_stream_module.so',
	module => $ENV{DEMO_MODULE}
		// "$FindBin::Bin/../build/ngx_stream_xmpp_federation_module.so",
);

sub start_edge {
	return undef if $opt{'no-edge'};

	die "demo: $edge{module} missing (make)\n" unless -e $edge{module};

	my $d = "$dir/edge";
	mkdir $d;

	my $load = "load_module $edge{module};\n";
	$load = "load_module $edge{stream};\n$load"
		if -e $edge{stream} && `$edge{nginx} -V 2>&1` =~ /stream=dynamic/;

	open my $fh, '>', "$d/nginx.conf" or die $!;
	print $fh <<"EOF";
$load
pid $d/nginx.pid;
error_log $d/error.log info;
worker_processes 1;

events { }

stream {
    resolver 127.0.0.1:$port{dns_world} ipv6=off;

    log_format xmpp '\$remote_addr \$server_port from=\$xmpp_from '
                    'to=\$xmpp_to partner=\$xmpp_partner '
                    'type=\$xmpp_partner_type error=\$xmpp_stream_error '
                    'status=\$status time=\$session_time';
    access_log $d/access.log xmpp;

    xmpp_federation_local_domains contoso.example;
    xmpp_federation_dialback_secret "demo secret, change me";

    xmpp_federation_partner fabrikam.example {
        description "Fabrikam, Inc.";
        type        federated;
        tls         not_supported;
        sasl        not_supported;
        dialback    on;
    }

    server {                            # public: partners come in here
        listen 127.0.0.1:$port{edge_public};
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:$port{gateway_s2s};
    }

    server {                            # internal: the gateway comes here
        listen 127.0.0.1:$port{edge_internal};
        allow 127.0.0.1;
        deny all;
        xmpp_federation outbound;
        xmpp_federation_pass 127.0.0.1:$port{gateway_s2s};
    }
}
EOF
	close $fh;

	Test::XMPP::Servers::release($port{edge_public}, $port{edge_internal});

	system($edge{nginx}, '-p', "$d/", '-c', "$d/nginx.conf",
		'-e', "$d/error.log") == 0
		or die "demo: the edge did not start:\n" . `cat $d/error.log`;

	for (1 .. 50) {
		last if -s "$d/nginx.pid";
		sleep(0.1);
	}

	return $d;
}

sub stop_edge {
	my ($d) = @_;
	return unless $d && -s "$d/nginx.pid";
	open my $fh, '<', "$d/nginx.pid" or return;
	my $pid = <$fh>;
	chomp $pid;
	kill 'TERM', $pid;
	for (1 .. 50) {
		last unless kill 0, $pid;
		sleep(0.1);
	}
	kill 'KILL', $pid if kill 0, $pid;
}

my $edge = start_edge();

END { stop_edge($edge) if $edge; }

# where each view sends s2s traffic; ejabberd resolves SRV targets with
# getaddrinfo() (the system's resolver), so the records an ejabberd looks
# up name 127.0.0.1 itself as target

sub srv {
	my ($port, $resolver) = @_;
	return $resolver eq 'ejabberd' ? [ $port, '127.0.0.1' ] : $port;
}

my %world = (
	$dom{local} => srv($edge ? $port{edge_public} : $port{gateway_s2s},
		$opt{partner}),
	$dom{partner} => $port{partner_s2s},
);

my %gateway_view = (
	$dom{partner} => srv($edge ? $port{edge_internal} : $port{partner_s2s},
		$opt{gateway}),
	$dom{local} => $port{gateway_s2s},
);

###############################################################################

say_("work directory $dir");
say_($edge ? 'edge between gateway and partner'
	: 'no edge: gateway and partner federate directly');

my $dns_world = $xs->dnsmasq(name => 'world', port => $port{dns_world},
	xmpp => \%world);
my $dns_gateway = $xs->dnsmasq(name => 'gateway', port => $port{dns_gateway},
	xmpp => \%gateway_view);

for my $v ([ world => $dns_world, \%world ],
	[ gateway => $dns_gateway, \%gateway_view ])
{
	say_("dns view '$v->[0]' on 127.0.0.1:", $v->[1]->port, ': ',
		join(', ', map {
			my $x = $v->[2]{$_};
			"$_ -> 127.0.0.1:" . (ref $x ? $x->[0] : $x)
		} sort keys %{$v->[2]}));
}

my ($gw_kind, $pt_kind) = @opt{qw/ gateway partner /};

my $gateway = $xs->$gw_kind(name => 'gateway', domain => $dom{local},
	port => $port{gateway_s2s}, c2s_port => $port{gateway_c2s},
	dns => $dns_gateway->port, users => { alice => 'alice-pw' });

say_("gateway  $dom{local} ($opt{gateway}): s2s ", $gateway->s2s,
	', c2s ', $gateway->c2s, ", DNS view 'gateway'");

my $partner = $xs->$pt_kind(name => 'partner', domain => $dom{partner},
	port => $port{partner_s2s}, c2s_port => $port{partner_c2s},
	dns => $dns_world->port, users => { bob => 'bob-pw' });

say_("partner  $dom{partner} ($opt{partner}): s2s ", $partner->s2s,
	', c2s ', $partner->c2s, ", DNS view 'world'");

###############################################################################

my $ok = 1;

# inbound: bob -> alice, alice logged in

my $alice = $xs->receiver(%{$user{alice}}, c2s => $gateway->c2s);
say_("alice logged in at the gateway");

my $r = $xs->send_message(from_jid => $user{bob}{jid},
	password => $user{bob}{password}, c2s => $partner->c2s,
	to => $user{alice}{jid}, body => 'Hello from Fabrikam!', wait => 1);

say_("bob -> alice: ", $r->{ok} ? 'sent' : 'NOT sent',
	$r->{error} ? " (bounced: $r->{error}{condition})" : '');

my ($m) = $alice->wait_for(1, 10);
if ($m) {
	say_("alice received from $m->{from}: \"$m->{body}\"");
} else {
	say_("alice received nothing");
	$ok = 0;
}

# outbound: alice -> bob, bob offline, then logs in; through the edge this
# waits for the outbound relay (a later release): the edge refuses the
# gateway's stanza with a stream error and the gateway bounces it

if ($edge) {
	$r = $xs->send_message(from_jid => $user{alice}{jid},
		password => $user{alice}{password}, c2s => $gateway->c2s,
		to => $user{bob}{jid}, body => 'Hello from Contoso!', wait => 3);

	say_("alice -> bob: ", $r->{error}
		? "bounced to alice by the edge: $r->{error}{condition}"
			. " (outbound relay is a later release)"
		: $r->{ok} ? 'sent, no bounce seen' : 'NOT sent');

} else {
	$r = $xs->send_message(from_jid => $user{alice}{jid},
		password => $user{alice}{password}, c2s => $gateway->c2s,
		to => $user{bob}{jid}, body => 'Hello from Contoso!', wait => 1);

	say_("alice -> bob: ", $r->{ok} ? 'sent' : 'NOT sent',
		$r->{error} ? " (bounced: $r->{error}{condition})" : '');

	my $n = $partner->wait_offline('bob', 1, 10);
	say_("stored offline for bob on the partner: ", $n // 0);

	($m) = $xs->receive_message(%{$user{bob}}, c2s => $partner->c2s,
		timeout => 10);
	if ($m) {
		say_("bob logged in, received from $m->{from}: \"$m->{body}\"",
			$m->{delayed} ? ' (delayed: stored while offline)' : '');
	} else {
		say_("bob received nothing");
		$ok = 0;
	}
}

###############################################################################

# what the servers saw

sub excerpt {
	my ($who, $proc, $re) = @_;
	for my $line (grep { /$re/ } split(/\n/, $proc->log())) {
		$line =~ s/^\w+ \d+ [\d:]+ //;		# prosody, dnsmasq
		$line =~ s/^\d{4}-[\d-]+ \S+ \[\w+\] <[\d.]+>\@\S+ //; # ejabberd
		$line =~ s/\s+/ /g;
		print "    $who: $line\n";
	}
}

say_("s2s streams:");
# Prosody: "... s2s connection A->B complete"; ejabberd: "Accepted inbound
# s2s dialback ..." / "Outbound s2s connection started ..."
my $s2s = qr/s2s connection \S+ complete|ccepted inbound s2s|Outbound s2s/;
excerpt('gateway', $gateway, $s2s);
excerpt('partner', $partner, $s2s);

say_("dns queries:");
excerpt('world  ', $dns_world, qr/query\[SRV\]/);
excerpt('gateway', $dns_gateway, qr/query\[SRV\]/);

if ($edge) {
	say_("the edge's decisions ($edge/error.log):");
	open my $fh, '<', "$edge/error.log" or die $!;
	for (<$fh>) {
		next unless /XMPP stream|dialback|gateway|stream error/;
		s/^\S+ \S+ \[\w+\] \d+#\d+: //;
		s/, client: .*//s;
		print "    edge: $_\n";
	}
	say_("the edge's access log ($edge/access.log):");
	open $fh, '<', "$edge/access.log" or die $!;
	print "    edge: $_" for <$fh>;
}

say_($ok ? 'federation works' : 'FAILED');

if ($opt{keep}) {
	say_("running; ^C stops everything");
	sleep(3600) while 1;
}

stop_edge($edge);
$xs->stop_all();
say_("stopped; logs in $dir");

exit($ok ? 0 : 1);

###############################################################################
