#!/usr/bin/perl

# Tests for the inbound content handler of ngx_xmpp_federation_module:
# the answer to a good stream header (header, features per partner policy),
# and every stream error the edge sends while the stream is negotiated.

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use Time::HiRes qw/ time /;

use Test::Nginx qw/ port scaled /;
use Test::Nginx::XMPP qw/ xmpp /;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

my $STREAMS = 'http://etherx.jabber.org/streams';
my $ERRNS = 'urn:ietf:params:xml:ns:xmpp-streams';
my $TLSNS = 'urn:ietf:params:xml:ns:xmpp-tls';

my $t = Test::Nginx->new()->has(qw/stream/);

# partners: one per tls setting, one without dialback; one local domain
#
#   fabrikam.example   tls required, dialback on, + corp.fabrikam.example
#   tailspin.example   tls optional, dialback on
#   litware.example    tls not_supported, dialback on
#   adatum.example     tls required, sasl required, dialback off
#
# 8080: defaults; 8081: max header size 512; 8082: timeout 1s

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    xmpp_federation_local_domains contoso.example;

    xmpp_federation_partner fabrikam.example {
        additional_domains corp.fabrikam.example;
        type               federated;
        tls                required;
        sasl               optional;
        dialback           on;
    }

    xmpp_federation_partner tailspin.example {
        tls                optional;
        sasl               not_supported;
        dialback           on;
    }

    xmpp_federation_partner litware.example {
        tls                not_supported;
        sasl               not_supported;
        dialback           on;
    }

    xmpp_federation_partner adatum.example {
        tls                required;
        sasl               required;
        dialback           off;
    }

    server {
        listen               127.0.0.1:%%PORT_8080%%;
        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8099%%;
    }

    server {
        listen               127.0.0.1:%%PORT_8081%%;
        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8099%%;
        xmpp_federation_max_header_size 512;
    }

    server {
        listen               127.0.0.1:%%PORT_8082%%;
        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8099%%;
        xmpp_federation_timeout 1s;
    }
}

EOF

# the same edge with only a partner that does not allow dialback

$t->write_file_expand('nodialback.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    xmpp_federation_local_domains contoso.example;

    xmpp_federation_partner adatum.example {
        tls                required;
        sasl               required;
        dialback           off;
    }

    server {
        listen               127.0.0.1:%%PORT_8080%%;
        xmpp_federation      inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8099%%;
    }
}

EOF

$t->try_run('no xmpp_federation')->plan(74);

###############################################################################

# helpers

sub hdr {
	return Test::Nginx::XMPP->header(@_);
}

sub peer {
	my ($port) = @_;
	return xmpp('127.0.0.1:' . port($port // 8080));
}

# opens a stream, returns (connection, edge's header, features)

sub negotiate {
	my (%args) = @_;

	my $port = delete $args{port};
	my $x = peer($port);

	$x->open_stream(to => 'contoso.example', %args);

	my $h = $x->read_header();
	my $f = defined $h ? $x->read_element('stream:features') : undef;

	return ($x, $h, $f);
}

# what is left on the connection, summarised: "header " when the edge's
# header opens it, the condition of the stream error, "end" when
# </stream:stream> follows the error and nothing else, "closed" when the
# edge closed the connection

sub refusal {
	my ($x, %opts) = @_;

	my $closed = $x->closed(timeout => $opts{timeout} // 5);
	my @r;

	push @r, 'header' if $x->pending() =~ /^(?:<\?xml[^>]*\?>)?<stream:stream\s/
		&& defined $x->read_header(timeout => 0);

	my $cond = $x->pending() =~ /^<stream:error>/
		? $x->stream_error(timeout => 0) : undef;
	push @r, $cond // 'no error: ' . $x->pending();

	push @r, 'end' if defined $cond && $x->pending() eq '</stream:stream>';
	push @r, $closed ? 'closed' : 'open';

	return join(' ', @r);
}

# raw bytes as the first data of a connection

sub refuse_raw {
	my ($data, $port) = @_;

	my $x = peer($port);
	$x->send($data);

	return refusal($x);
}

# a top-level element after a good header and the features

sub refuse_element {
	my ($data, $from) = @_;

	my ($x, $h, $f) = negotiate(from => $from // 'fabrikam.example');
	return 'no features' unless defined $f;

	$x->send($data);

	return refusal($x);
}

###############################################################################

# the edge's header

my ($x, $h, $f) = negotiate(from => 'fabrikam.example', db => 1);

like($h, qr/^<\?xml version='1.0'\?><stream:stream\s/, 'header: declaration');
is(join(' ', map { $x->attr($h, $_) // '-' }
		qw/ xmlns xmlns:stream xmlns:db version /),
	"jabber:server $STREAMS jabber:server:dialback 1.0",
	'header: namespaces and version');
is($x->attr($h, 'from'), 'contoso.example', 'header: from is the local domain');
is($x->attr($h, 'to'), 'fabrikam.example', 'header: to is the peer');

my $id1 = $x->attr($h, 'id') // '';
like($id1, qr/^[0-9a-f]{32}$/i, 'header: id of 32 hex digits');

my ($y, $h2) = negotiate(from => 'fabrikam.example');
my $id2 = $x->attr($h2, 'id') // '';
ok(length $id2 && $id1 ne $id2, 'header: ids differ between streams');

# more streams than one fill of the edge's pool of random bytes serves
# (16 ids of 16 bytes): every id its own

my %ids = ($id1 => 1, $id2 => 1);

for (1 .. 40) {
	my ($z, $hz) = negotiate(from => 'fabrikam.example');
	my $id = $z->attr($hz, 'id') // '';
	$ids{$id}++ if $id =~ /^[0-9a-f]{32}$/i;
}

is(scalar(grep { $_ == 1 } values %ids), 42,
	'header: 42 streams, 42 ids of 32 hex digits, none twice');

# stream features per partner policy

like($f, qr!<starttls xmlns='$TLSNS'><required/></starttls>!,
	'tls required: starttls with required');
ok(defined $f && $f !~ /dialback/,
	'tls required: no dialback before tls');
ok(defined $f && $f !~ /mechanisms|xmpp-sasl/, 'no sasl mechanisms before tls');

(undef, undef, $f) = negotiate(from => 'tailspin.example');
like($f, qr!<starttls xmlns='$TLSNS'/>!, 'tls optional: starttls');
ok(defined $f && $f !~ /required/, 'tls optional: starttls not required');
ok(defined $f && $f !~ /mechanisms|xmpp-sasl/,
	'tls optional: no sasl before tls');
like($f, qr!<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>!,
	'tls optional, dialback on: dialback feature with errors');

(undef, undef, $f) = negotiate(from => 'litware.example');
ok(defined $f && $f !~ /starttls/, 'tls not_supported: no starttls');
like($f, qr/<dialback /, 'tls not_supported: dialback offered');

(undef, undef, $f) = negotiate(from => 'adatum.example');
ok(defined $f && $f !~ /dialback/, 'dialback off: no dialback feature');
like($f, qr!<starttls xmlns='$TLSNS'><required/>!, 'dialback off: starttls');

# domains

($x, $h, $f) = negotiate(from => 'corp.fabrikam.example');
like($f, qr!<starttls xmlns='$TLSNS'><required/>!,
	'additional domain: accepted with the partner policy');
is($x->attr($h, 'to'), 'corp.fabrikam.example', 'additional domain: to');

($x, $h, $f) = negotiate(to => 'Contoso.Example.', from => 'fabrikam.example');
like($f, qr/<starttls /, 'to compared case-insensitively, trailing dot');
is(lc($x->attr($h, 'from') // '') =~ s/\.$//r, 'contoso.example',
	'to with trailing dot: header from is the local domain');

(undef, undef, $f) = negotiate(from => 'FABRIKAM.Example.');
like($f, qr/<starttls [^>]*><required\/>/,
	'from compared case-insensitively, trailing dot');

($x, $h, $f) = negotiate(from => 'fabrikam.example', version => '1.1');
ok(defined $f && $x->attr($h, 'version') eq '1.0',
	'version 1.1 accepted, answered with 1.0');

(undef, undef, $f) = negotiate(from => 'fabrikam.example', xmldecl => 0);
like($f, qr/<starttls /, 'header without xml declaration');

(undef, undef, $f) = negotiate(from => 'fabrikam.example',
	extra => "xmlns:x='urn:example:x'");
like($f, qr/<starttls /, 'header declaring another prefix');

$x = peer();
$x->send("<?xml version='1.0' encoding='UTF-8'?>"
	. hdr(xmldecl => 0, to => 'contoso.example', from => 'fabrikam.example'));
$x->read_header();
like($x->read_element('stream:features'), qr/<starttls /,
	'encoding UTF-8 accepted');

# no from: a legacy dialback peer, accepted while a partner allows dialback

($x, $h, $f) = negotiate(db => 1);
like($f, qr!<dialback xmlns='urn:xmpp:features:dialback'><errors/>!,
	'no from: dialback offered');

# the header in pieces

$x = peer();
$x->send_slowly(hdr(to => 'contoso.example', from => 'fabrikam.example'),
	0.002);
$x->read_header();
like($x->read_element('stream:features'), qr/<starttls /,
	'header one byte at a time');

# after the features: stanzas, negotiation elements, the end

$x = peer();
$x->send(hdr(to => 'contoso.example', from => 'fabrikam.example')
	. "<message from='a\@fabrikam.example' to='b\@contoso.example'>"
	. "<body>hi</body></message>");
like(($x->read_header() // '') . ($x->read_element('stream:features') // ''),
	qr!^<\?xml.*<stream:features>.*</stream:features>$!s,
	'pipelined stanza: features first');
is(refusal($x), 'policy-violation end closed',
	'pipelined stanza before required tls: policy-violation');

is(refuse_element("<message from='a\@fabrikam.example' "
		. "to='b\@contoso.example'><body>hi</body></message>"),
	'policy-violation end closed', 'message before required tls: policy-violation');
is(refuse_element("<presence from='a\@tailspin.example' "
		. "to='b\@contoso.example'/>", 'tailspin.example'),
	'not-authorized end closed', 'presence: not-authorized');
is(refuse_element("<iq type='get' id='1' from='tailspin.example' "
		. "to='contoso.example'><ping xmlns='urn:xmpp:ping'/></iq>",
		'tailspin.example'),
	'not-authorized end closed', 'iq: not-authorized');
is(refuse_element("<db:result xmlns:db='jabber:server:dialback' "
		. "from='fabrikam.example' to='contoso.example'>"
		. "0123456789abcdef</db:result>"),
	'policy-violation end closed',
	'db:result before tls, partner requires tls: policy-violation');
is(refuse_element("<message xmlns='jabber:client' to='b\@contoso.example'/>"),
	'invalid-namespace end closed', 'jabber:client element: invalid-namespace');
is(refuse_element("<foo xmlns='urn:example'/>"),
	'unsupported-stanza-type end closed',
	'unknown element: unsupported-stanza-type');
is(refuse_element("<!-- a comment -->"), 'restricted-xml end closed',
	'comment after the header: restricted-xml');

($x, $h, $f) = negotiate(from => 'fabrikam.example');
$x->send("<starttls xmlns='$TLSNS'/>");
ok($x->closed(), 'starttls: connection closed');
is($x->buffer() =~ s/^.*<\/stream:features>//sr,
	"<failure xmlns='$TLSNS'/></stream:stream>",
	'starttls: failure, then the stream ends');

($x, $h, $f) = negotiate(from => 'fabrikam.example');
$x->send("  \n  ");
$x->send('</stream:stream>');
ok($x->closed() && $x->pending() eq '</stream:stream>',
	'whitespace ignored; peer closes the stream, edge closes too');

# stream errors at the header: our header first, the error, the end

my %h = (to => 'contoso.example', from => 'fabrikam.example');

is(refuse_raw(hdr(%h, to => undef)), 'header host-unknown end closed',
	'no to: host-unknown');
is(refuse_raw(hdr(%h, to => 'example.org')), 'header host-unknown end closed',
	'to not local: host-unknown');
is(refuse_raw(hdr(%h, to => 'fabrikam.example')),
	'header host-unknown end closed', 'to a partner domain: host-unknown');
is(refuse_raw(hdr(%h, from => 'example.org')),
	'header policy-violation end closed',
	'from not a partner: policy-violation');
is(refuse_raw(hdr(%h, stream_ns => 'urn:example:streams')),
	'header invalid-namespace end closed',
	'wrong stream namespace: invalid-namespace');
is(refuse_raw(hdr(%h) =~ s/<stream:stream /<stream:foo /r),
	'header invalid-namespace end closed',
	'root element not stream: invalid-namespace');
is(refuse_raw(hdr(%h, ns => 'jabber:client')),
	'header invalid-namespace end closed',
	'default namespace jabber:client: invalid-namespace');
is(refuse_raw(hdr(%h, ns => undef)), 'header invalid-namespace end closed',
	'no default namespace: invalid-namespace');
is(refuse_raw(hdr(%h) =~ s/<stream:stream/<foo:stream/r
		=~ s/xmlns:stream=/xmlns:foo=/r),
	'header bad-namespace-prefix end closed',
	'stream prefix foo: bad-namespace-prefix');
is(refuse_raw(hdr(%h, version => undef)),
	'header unsupported-version end closed',
	'no version: unsupported-version');
is(refuse_raw(hdr(%h, version => '2.0')),
	'header unsupported-version end closed',
	'version 2.0: unsupported-version');
is(refuse_raw(hdr(%h) =~ s/>$/ <>/r), 'header not-well-formed end closed',
	'broken xml: not-well-formed');
is(refuse_raw("<!DOCTYPE stream:stream>" . hdr(%h, xmldecl => 0)),
	'header restricted-xml end closed', 'doctype: restricted-xml');
is(refuse_raw("<?foo bar?>" . hdr(%h, xmldecl => 0)),
	'header restricted-xml end closed', 'processing instruction: restricted-xml');
is(refuse_raw("<?xml version='1.0'?><!-- hi -->" . hdr(%h, xmldecl => 0)),
	'header restricted-xml end closed', 'comment: restricted-xml');
is(refuse_raw("<?xml version='1.0'?><!DOCTYPE stream:stream ["
		. "<!ENTITY x 'y'>]>" . hdr(%h, xmldecl => 0)),
	'header restricted-xml end closed', 'entity declaration: restricted-xml');
is(refuse_raw("<?xml version='1.0' encoding='ISO-8859-1'?>"
		. hdr(%h, xmldecl => 0)),
	'header unsupported-encoding end closed',
	'encoding ISO-8859-1: unsupported-encoding');

# RFC 6120 4.7.3 and errors.md: the header before the error is a full
# response header, with our domain and a fresh id

$x = peer();
$x->send(hdr(%h, from => 'example.org'));
$x->closed();
$h = $x->read_header(timeout => 0);
is(join(' ', $x->attr($h, 'from') // 'no from',
		($x->attr($h, 'id') // '') =~ /^[0-9a-f]{32}$/i ? 'id' : 'no id'),
	'contoso.example id', 'refused header: from is the local domain, has an id');

# header size, limit 512 on 8081

my $big = hdr(%h, extra => "a='" . ('x' x 512) . "'");

is(refuse_raw($big, 8081), 'header policy-violation end closed',
	'header too large, one chunk: policy-violation');

my $fill = hdr(%h, extra => "a=''");
my $exact = hdr(%h, extra => "a='" . ('x' x (512 - length $fill)) . "'");

$x = peer(8081);
$x->send($exact);
$x->read_header();
ok(length $exact == 512 && defined $x->read_element('stream:features'),
	'header of exactly the maximum size accepted');
is(refuse_raw($exact =~ s/a='/a='x/r, 8081), 'header policy-violation end closed',
	'header one byte over the maximum size: policy-violation');

# incomplete: the limit holds before the header ends

$x = peer(8081);
$x->send_slowly(substr($big, 0, 600), 0.001);
is(refusal($x), 'header policy-violation end closed',
	'header too large, trickled: policy-violation');

$x = peer(8081);
$x->send(substr($big, 0, 600));
is(refusal($x), 'header policy-violation end closed',
	'header too large, incomplete in one chunk: policy-violation');

# establishment timeout, 1s on 8082

my $start = time();
$x = peer(8082);
my $r = refusal($x, timeout => 10);
my $elapsed = time() - $start;
is($r, 'header connection-timeout end closed',
	'no header in time: connection-timeout');
ok($elapsed > 0.8 && $elapsed < scaled(5), 'timeout after about 1s')
	or diag("elapsed $elapsed");

# the timeout runs from the connect, bytes arriving do not extend it

$x = peer(8082);
$x->send_slowly(hdr(%h), 0.01);
is(refusal($x, timeout => 10), 'header connection-timeout end closed',
	'header trickled past the timeout: connection-timeout');

($x, $h, $f) = negotiate(port => 8082, from => 'fabrikam.example');
ok(defined $f && refusal($x, timeout => 10) eq 'connection-timeout end closed',
	'not negotiated in time: connection-timeout');

$x = undef;
$y = undef;

###############################################################################

# the info lines in the log

$t->stop();

my $log = $t->read_file('error.log');

like($log, qr/\[info\] .*XMPP stream error <host-unknown\/>: "to" is not a local domain/,
	'log: host-unknown with reason');
like($log, qr/\[info\] .*XMPP stream error <policy-violation\/>: "from" is not a partner domain/,
	'log: policy-violation with reason');
like($log, qr/\[info\] .*XMPP stream error <restricted-xml\/>: processing instruction/,
	'log: restricted-xml with reason');
like($log, qr/\[info\] .*XMPP stream error <connection-timeout\/>: no stream header in time/,
	'log: connection-timeout with reason');

###############################################################################

# no partner allows dialback: a header without from is refused

$t->run('nodialback.conf');

is(refuse_raw(hdr(to => 'contoso.example', db => 1)),
	'header policy-violation end closed',
	'no from, no partner with dialback: policy-violation');

(undef, undef, $f) = negotiate(from => 'adatum.example');
like($f, qr/<starttls /, 'no dialback partners: partner stream accepted');

###############################################################################
