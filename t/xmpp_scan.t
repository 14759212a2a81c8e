#!/usr/bin/perl

# The stanza fast path of the parser (ngx_xmpp_federation_scan*) against
# XML's rules, on a partner stream authenticated by dialback through the
# edge to a scripted gateway: well-formed stanzas of every shape the scan
# takes or leaves to expat reach the gateway byte for byte and in order,
# whole or in pieces; malformed ones end the stream with the right stream
# error and nothing of them reaches the gateway; and a differential fuzz
# with a fixed seed, where expat (XML::Parser) says what the edge must do.

use warnings;
use strict;

use Test::More;

use FindBin;
use lib "$FindBin::Bin/lib";

use Time::HiRes qw/ time sleep /;
use bytes ();

use Test::Nginx qw/ port scaled /;
use Test::Nginx::XMPP qw/ xmpp /;
use Test::XMPP::Peers qw/ authoritative gateway /;

###############################################################################

select STDERR; $| = 1;
select STDOUT; $| = 1;

eval { require XML::Parser; 1 }
	or plan(skip_all => 'XML::Parser (libxml-parser-perl) not installed');

my $t = Test::Nginx->new()->has(qw/stream xmpp_federation/);

# 8080: inbound, defaults; 8082: inbound, stanzas up to 4k;
# 8081: the internal listener the gateway verifies the edge's key at

$t->write_file_expand('nginx.conf', <<'EOF');

%%TEST_GLOBALS%%

events {
}

stream {
    %%TEST_GLOBALS_STREAM%%

    xmpp_federation_local_domains contoso.example;
    xmpp_federation_dialback_secret "a long random secret for the scan";

    xmpp_federation_partner fabrikam.example {
        tls      not_supported;
        sasl     not_supported;
        dialback on;
        server   127.0.0.1:%%PORT_8090%%;
    }

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
    }

    server {
        listen 127.0.0.1:%%PORT_8082%%;
        xmpp_federation inbound;
        xmpp_federation_pass 127.0.0.1:%%PORT_8091%%;
        xmpp_federation_max_stanza_size 4k;
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
$t->try_run('no xmpp_federation')->plan(160);

$t->waitforsocket('127.0.0.1:' . port(8090));
$t->waitforsocket('127.0.0.1:' . port(8091));

###############################################################################

my $FROM = 'bob@fabrikam.example';
my $TO = 'alice@contoso.example';
my $MAX = 4096;

# the partner's stream header, as the edge sees it; expat's context for
# the oracle is the same header

my $HDR = Test::Nginx::XMPP->header(to => 'contoso.example',
	from => 'fabrikam.example', db => 1);

# a stanza from the authenticated partner to a local user

sub msg {
	my ($id, $inner, $attrs) = @_;
	$attrs = defined $attrs ? " $attrs" : '';
	return "<message from='$FROM' to='$TO' id='$id'$attrs>"
		. ($inner // '') . "</message>";
}

###############################################################################

# expat's (XML::Parser's) view of bytes that follow the stream header:
# the top-level elements it completes, with their offsets, and the first
# thing that ends a stream: a syntax error, text between stanzas, a
# comment, PI or DOCTYPE (restricted XML); undef when there is none.
# { elements => [ { start, end, ns, name, from, to } ], problem =>
# [ kind, detail ], depth, bytes }

sub expat_view {
	my ($bytes) = @_;

	my $off = length $HDR;
	my (@el, $problem, $cur, $ns_space);
	my $depth = 0;

	my $stop = sub {
		$problem //= [@_];
		die "STOP\n";
	};

	my $p = XML::Parser->new(Namespaces => 1, Handlers => {
		Start => sub {
			my ($e, $name, %a) = @_;
			$depth++;
			for my $prefix ($e->new_ns_prefixes()) {
				$ns_space = 1
					if ($e->expand_ns_prefix($prefix) // '') =~ /\s/;
			}
			return unless $depth == 2;
			$cur = { start => $e->current_byte() - $off,
				name => "$name", ns => $e->namespace($name) // '',
				from => $a{from}, to => $a{to} };
		},
		End => sub {
			my ($e) = @_;
			if ($depth == 2) {
				# an empty-element tag ends where its end event is
				$cur->{end} = $e->current_byte()
					+ bytes::length($e->original_string()) - $off;
				push @el, $cur;
			}
			$depth--;
		},
		Char => sub {
			my ($e, $s) = @_;
			$stop->('text', "text between stanzas")
				if $depth == 1 && $s =~ /[^ \t\r\n]/;
		},
		Comment => sub { $stop->('restricted', 'comment') },
		Proc => sub { $stop->('restricted', 'processing instruction') },
		Doctype => sub { $stop->('restricted', 'doctype') },
	});

	my $nb = $p->parse_start();

	eval { $nb->parse_more($HDR . $bytes); 1 } or do {
		my $err = $@;
		$problem //= ['xml', $err =~ s/^\s+//r =~ s/\n.*//sr];
	};

	return { elements => \@el, problem => $problem, depth => $depth,
		bytes => $bytes, ns_space => $ns_space };
}

# the domain of a JID, as RFC 7622 has it; ASCII case-insensitive

sub jid_domain {
	my ($jid) = @_;
	return undef unless defined $jid;
	$jid =~ s{/.*}{}s;
	$jid =~ s{^[^@]*@}{}s;
	return $jid =~ tr/A-Z/a-z/r;
}

# an element the edge relays: a stanza of jabber:server from the partner
# domain this stream authenticated, to a local domain

sub acceptable {
	my ($el) = @_;

	return 0 unless $el->{ns} eq 'jabber:server'
		&& $el->{name} =~ /^(?:message|presence|iq)$/;

	return (jid_domain($el->{from}) // '') eq 'fabrikam.example'
		&& (jid_domain($el->{to}) // '') eq 'contoso.example';
}

# what the edge must do with bytes on an authenticated stream, from
# expat's view: { relay => bytes it must forward, error => undef or the
# condition ('*' for any, a refusal of a well-formed element) }

sub expected {
	my ($v) = @_;

	my ($first, $last, $error);

	for my $el (@{$v->{elements}}) {
		if (!acceptable($el)) {
			$error = '*';
			last;
		}
		$first //= $el->{start};
		$last = $el->{end};
	}

	if (!defined $error && $v->{problem}) {
		$error = $v->{problem}[0] eq 'restricted'
			? 'restricted-xml' : 'not-well-formed';
	}

	my $relay = defined $first
		? substr($v->{bytes}, $first, $last - $first) : '';

	# complete: expat ended the last element with the last byte
	my $complete = !$v->{problem} && $v->{depth} == 1 && @{$v->{elements}}
		&& $v->{elements}[-1]{end} == length $v->{bytes};

	# a namespace name with whitespace is no URI; XML::Parser takes it,
	# an expat using ' ' as its namespace separator does not (tested on
	# its own below): either outcome

	return { relay => $relay, error => $error, complete => $complete,
		either => $v->{ns_space} };
}

# the content of a stream, whole: the stream ends right after it

sub well_formed {
	my ($bytes) = @_;
	my $v = expat_view($bytes . '</stream:stream>');
	return !$v->{problem} && $v->{depth} == 0;
}

###############################################################################

# the partner's side

sub esc {
	my ($s) = @_;
	return '(undef)' unless defined $s;
	$s =~ s/([^\x20-\x7e])/sprintf('\\x%02X', ord($1))/ge;
	return '"' . $s . '"';
}

sub authenticated {
	my ($port) = @_;

	my $x = xmpp('127.0.0.1:' . port($port // 8080));
	$x->open_stream(from => 'fabrikam.example', to => 'contoso.example',
		db => 1);
	$x->read_element('stream:features');
	$x->send("<db:result from='fabrikam.example' to='contoso.example'>"
		. "goodkey</db:result>");

	my $r = $x->read_element('db:result', timeout => 8);
	die "dialback failed: " . ($r // 'no answer') . "\n"
		unless defined $r && $r =~ /type='valid'/;

	# the gateway logged its check before the edge heard of it
	$x->{_idx} = () = gateway_log() =~ /\nVERIFY /g;

	return $x;
}

# bytes in several writes, $pause seconds apart; the pieces as a list of
# cut points or a number of pieces of about the same size

sub send_pieces {
	my ($x, $data, $pieces, $pause) = @_;

	my @cuts = ref $pieces ? @$pieces : map {
		int(length($data) * $_ / $pieces)
	} 1 .. $pieces - 1;

	my $at = 0;
	for my $cut (@cuts, length $data) {
		next if $cut <= $at;
		$x->send(substr($data, $at, $cut - $at));
		$at = $cut;
		sleep($pause // 0.02) if $at < length $data;
	}
}

###############################################################################

# the gateway's side: what it received on each stream, in order

sub gateway_log {
	return eval { $t->read_file('gateway.log') } // '';
}

# what the gateway received on the stream of an authenticated connection:
# the bytes after its dialback check, up to the next stream's header

sub relayed {
	my ($x_or_idx, $log) = @_;

	my $idx = ref $x_or_idx ? $x_or_idx->{_idx} : $x_or_idx;
	my @parts = split /\nVERIFY [^\n]*\n/, $log // gateway_log(), -1;

	my $r = $parts[$idx] // '';
	$r =~ s/(?:<\?xml[^>]*\?>)?<stream:stream\s.*\z//s;

	# the end of the stream before, when its gateway connection wrote
	# to the log after this one's check: not of this stream

	$r =~ s{\A</stream:stream>}{};

	return $r;
}

# the stream to the gateway ends when the partner's does

sub relayed_final {
	my ($r) = @_;
	return $r =~ s{</stream:stream>\s*\z}{}r;
}

sub wait_relayed {
	my ($x, $len) = @_;

	my $deadline = time() + scaled(5);
	while (time() < $deadline) {
		return 1 if length(relayed($x)) >= $len;
		sleep(0.01);
	}
	return 0;
}

# the gateway's log no longer grows: a closed stream has all it will get

sub settle {
	my $size = -1;
	my $deadline = time() + scaled(3);
	while (time() < $deadline) {
		my $now = length gateway_log();
		return if $now == $size;
		$size = $now;
		sleep(0.1);
	}
}

###############################################################################

# part 1: well-formed stanzas, one authenticated stream; each check is on
# the bytes the gateway received since the previous one

my $g = authenticated();
my $seen = 0;

sub passes {
	my ($data, %o) = @_;

	return 'test input is not well-formed XML: ' . esc($data)
		unless well_formed($data);

	if ($o{pieces}) {
		send_pieces($g, $data, $o{pieces}, $o{pause});
	} elsif ($o{slowly}) {
		$g->send_slowly($data, $o{slowly});
	} else {
		$g->send($data);
	}

	wait_relayed($g, $seen + length $data);

	my $got = substr(relayed($g), $seen);
	$seen += length $got;

	return 'byte for byte' if $got eq $data;

	$g->closed(timeout => 0.1);
	my $r = $g->pending() =~ /<stream:error>/
		? 'stream error ' . ($g->stream_error(timeout => 0) // '')
		: 'relayed ' . esc($got);

	if ($r =~ /^stream error/) {
		# the next checks on a new stream
		$g = authenticated();
		$seen = 0;
	}

	return $r;
}

is(passes(msg('p1', '<body>hello</body>')), 'byte for byte', 'plain message');
is(passes(msg('p1b', "<x tO='1' to='2' ido='3' id='4' types='5' type='6'"
		. " xmlnsx='7' From='8' from='9' t='10' i='11'/>")),
	'byte for byte', 'attributes named like from, to, id, type, xmlns');
is(passes(msg('p2', "<body xml:lang='de'>hallo</body>", "xml:lang='en'")),
	'byte for byte', 'xml:lang on the stanza and a child');
is(passes(msg('p3', "<body a='&lt;&gt;&amp;&quot;&apos;&#x1F600;&#233;'>"
		. "&lt;&gt;&amp;&quot;&apos; &#x1F600; &#233; &#10;</body>")),
	'byte for byte', 'predefined entities, char refs in text and values');
is(passes(msg('p3b', '<body/>', "type='&#99;hat'")
		. "<message from='bob&#64;fabrikam.example' to='$TO' id='a&amp;b'/>"),
	'byte for byte', 'references in from, id, type: decoded by expat');
is(passes(msg('p4', "<body a='caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80'>"
		. "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xC2\x80 \xDF\xBF"
		. " \xE0\xA0\x80 \xEF\xBF\xBD \xEE\x80\x80 \xF4\x8F\xBF\xBF"
		. "</body>")),
	'byte for byte', 'UTF-8 of 2, 3 and 4 bytes, boundaries of each');
is(passes(msg('p5', ('x' x 29) . "\xC3\xA9" . ('y' x 14) . "\xE2\x82\xAC"
		. ('z' x 31) . "\xF0\x9F\x98\x80&amp;" . ('w' x 30) . '&lt;',
		"a='" . ('v' x 15) . "\xC3\xA9" . ('u' x 14) . "\xF0\x9F\x98\x80'")),
	'byte for byte', 'UTF-8 and references across 16 and 32 byte blocks');
# each kind of byte the text scan stops at, at every offset of a 64-byte
# block and past it: a reference, a tag, '>', DEL, a tab, UTF-8

my $sweep = '';

for my $special ('&amp;', '<b/>', '>', "\x7F", "\t", "\xC3\xA9") {
	$sweep .= join '', map { msg("o$_", '<body>' . ('x' x $_) . $special
		. ('y' x (140 - $_)) . '</body>') } 0 .. 70;
}

is(passes($sweep), 'byte for byte',
	'bytes the text scan stops at, at offsets 0 to 70 of a body');
is(passes(msg('p6', "<x xmlns='jabber:x:data' type='form'><field var='f'>"
		. "<value>v</value></field></x><body>b</body>")),
	'byte for byte', 'child with its own default namespace');
is(passes("<presence from='$FROM' to='$TO'/>"
		. "<presence from='$FROM' to='$TO' type='unavailable' />"),
	'byte for byte', 'empty-element stanzas');
is(passes("<message  from = '$FROM'\n\tto=\"$TO\"\r\n id='p7' >"
		. "<body\n>text</body\t></message >"),
	'byte for byte', 'whitespace inside tags');
is(passes(msg('p8', "<body a='x>y' b=\"]]>\">a > b ]] > c</body>")),
	'byte for byte', "'>' and ']]>' in attribute values, '>' in text");
is(passes(msg('p9', "<message><message>inner</message></message>")),
	'byte for byte', 'children named like the stanza');
is(passes(msg('p10', "<body><![CDATA[<not a tag> & ]] ]]></body>")),
	'byte for byte', 'CDATA section');
is(passes(msg('p11', "<foo:x xmlns:foo='urn:example:foo'><foo:y foo:a='1'/>"
		. "</foo:x>")),
	'byte for byte', 'prefixed child with its own declaration');
is(passes("<message from=\"$FROM\" to=\"$TO\" id=\"it's\">"
		. "<body a=\"'q'\" b='\"d\"'>x</body></message>"),
	'byte for byte', 'double quotes around single quotes and back');
is(passes("<message xmlns='jabber:server' from='$FROM' to='$TO' id='p13'>"
		. "<body>x</body></message>"),
	'byte for byte', "xmlns='jabber:server' on the stanza");
is(passes(msg('p14', "<x xmlns=''><y/></x><z xml:space='preserve'/>")),
	'byte for byte', 'child undeclaring the default namespace');
is(passes(msg('p15', "<body a='x\ty\nz'>\x7F \r\n \xEF\xBF\xBD</body>",
		"id2='1\n2'")),
	'byte for byte', 'DEL, CR LF in text; tab and newline in values');
is(passes(msg('p16', "<_a.b-c1 _x.y-z2='1'/><A/>")),
	'byte for byte', "names with '_', '.', '-', digits, capitals");
is(passes(msg('p17', '<body>&#x10FFFF;&#65;&#0000000065;&#x000041;</body>')),
	'byte for byte', 'longest char ref, zero padded refs');

# what the scan tells at once, a stanza's name and " from='", " to='",
# " id='", " type='", " xmlns='", and the near misses it takes a byte at
# a time

is(passes("<iq from='$FROM' to='$TO' id='q1' type='get'>"
		. "<query xmlns='jabber:iq:version'/></iq>"
		. "<presence from=\"$FROM\" to=\"$TO\" type=\"probe\"/>"
		. "<message\tfrom='$FROM'\nto='$TO' id ='f1' type= 'chat'/>"
		. "<presence from='$FROM'  to='$TO' xmlns=\"jabber:server\"/>"
		. "<message fromx='1' from='$FROM' tox='2' to='$TO' idx='3'"
		. " types='4' xmlnsx='5' ids='6' id='f2' t='7' i='8' f='9'"
		. " x='10'/>"),
	'byte for byte', 'names and attributes told at once, and near misses');

# the domain of from and to, found 16 bytes at a time from each end in
# JIDs of 16 to 32 bytes: '@' and '/' in the resource, at every length
# around those

is(passes(join('', map {
		my $r = substr('x@y/z@' x 6, 0, $_);
		"<message from='bob\@fabrikam.example/$r'"
			. " to='contoso.example/$r' id='j$_'/>"
			. "<message from='fabrikam.example/$r' to='$TO/$r'/>"
	} 0 .. 16)),
	'byte for byte', "JIDs of 15 to 38 bytes, '\@' and '/' in resources");

is(passes(msg('p20', '<abcdefg>a</abcdefg><abcdefgh>b</abcdefgh >'
		. '<abcdefghi>c</abcdefghi><a>d</a>')),
	'byte for byte', 'end tags of 1, 7, 8 and 9 bytes');

# the scan's limits: 16 attributes, 32 levels; beyond, expat

is(passes(msg('p18', '<x ' . join(' ', map { "a$_='$_'" } 1 .. 16) . '/>'
		. '<y ' . join(' ', map { "a$_='$_'" } 1 .. 17) . '/>')),
	'byte for byte', '16 and 17 attributes on a child');
is(passes(msg('p18b', '', join(' ', map { "a$_='$_'" } 1 .. 13))
		. msg('p18c', '', join(' ', map { "a$_='$_'" } 1 .. 14))),
	'byte for byte', '16 and 17 attributes on the stanza');
is(passes(join('', map { msg("p19$_", ('<d>' x $_) . ('</d>' x $_)) }
		30, 31, 32, 40)),
	'byte for byte', 'nesting 31, 32, 33 and 41 deep');
is(passes("<message xmlns='jabber&#x3A;server' from='$FROM' to='$TO'/>"),
	'byte for byte', 'stanza namespace given with a reference');

# many at once, whitespace around them

my $many = join('', map {
	($_ % 3 ? '' : " \n") . ($_ % 2 ? msg("m$_", "<body>$_</body>")
		: "<presence from='$FROM' to='$TO' id='m$_'/>")
} 1 .. 200);

is(passes($many), 'byte for byte', '200 stanzas in one write, in order');
is(passes("   \n\t  "), 'byte for byte', 'whitespace keepalive alone');
is(passes(" \r\n" . msg('k1', '<body/>') . "  \n" . msg('k2') . "\t"),
	'byte for byte', 'whitespace keepalives between stanzas');

# the scan, expat, the scan again in one write: offsets stay right

is(passes(msg('x1', '<body>a</body>') . ' '
		. msg('x2', '<body><![CDATA[b]]></body>') . "\n"
		. msg('x3', '<body>c</body>')
		. msg('x4', "<f:b xmlns:f='urn:f'/>") . msg('x5')
		. "\t" . msg('x6', '<body>&#0000000065;</body>') . msg('x7')),
	'byte for byte', 'scanned and expat stanzas mixed in one write');

# in pieces: partial scans, then expat after too many

my $split = msg('s1', "<body a='&amp;'>caf\xC3\xA9 &lt; \xF0\x9F\x98\x80</body>"
	. "<x xmlns='jabber:x:data'/>");

is(passes($split, slowly => 0.002), 'byte for byte', 'stanza byte by byte');
is(passes(msg('s2', '<body>three pieces</body>'), pieces => 3),
	'byte for byte', 'stanza in 3 pieces');
is(passes(msg('s3a', '<body>four pieces</body>'), pieces => 4),
	'byte for byte', 'stanza in 4 pieces');
is(passes(msg('s3b', '<body>five pieces</body>'), pieces => 5),
	'byte for byte', 'stanza in 5 pieces');
is(passes(msg('s3', '<body>six pieces</body>'), pieces => 6),
	'byte for byte', 'stanza in 6 pieces');

my $every = msg('s4', "<body>\xE2\x82\xAC&amp;</body>");
my $ok = 1;
for my $cut (1 .. length($every) - 1) {
	my $r = passes($every, pieces => [$cut], pause => 0.005);
	next if $r eq 'byte for byte';
	$ok = 0;
	diag("split at $cut: $r");
	last;
}
ok($ok, 'stanza split in two at every byte');

is(passes(msg('s5', '<body>one</body>') . msg('s6', '<body>two</body>'),
		pieces => [10, 50, 70]),
	'byte for byte', 'two stanzas, cuts across both');
is(passes(msg('s7', '<body>' . ('x' x 40000) . "\xC3\xA9</body>")),
	'byte for byte', 'stanza of 40 kB in one write');
is(passes(msg('s8', '<body>' . ('y' x 40000) . "</body>"), pieces => 10,
		pause => 0.01),
	'byte for byte', 'stanza of 40 kB in 10 writes');
is(passes(msg('s9', "<body a='" . ('v' x 20000) . "'>" . ('y' x 20000)
		. "</body>"), pieces => 3, pause => 0.02),
	'byte for byte', 'stanza of 40 kB in 3 writes');

$g->send('</stream:stream>');
ok($g->read_until(qr{</stream:stream>}), 'part 1 stream ended cleanly');

###############################################################################

# part 2: malformed stanzas, each on its own stream after a good one:
# "condition; what the gateway got"

sub refused {
	my ($bad, %o) = @_;

	my $x = authenticated($o{port});
	my $good = $o{good} // msg('good', '<body>before</body>');

	if ($o{together}) {
		$bad = $good . $bad;
	} else {
		$x->send($good);
		wait_relayed($x, length $good);
	}

	if ($o{pieces}) {
		send_pieces($x, $bad, $o{pieces}, $o{pause});
	} elsif ($o{slowly}) {
		$x->send_slowly($bad, $o{slowly});
	} else {
		$x->send($bad);
	}

	my $cond = $x->stream_error(timeout => 5) // 'no stream error';
	$x->closed();
	settle();

	my $got = relayed_final(relayed($x)) =~ s/[ \t\r\n]+\z//r;

	return "$cond; " . ($got eq $good ? 'the good stanza only'
		: 'gateway got ' . esc($got));
}

my $NWF = 'not-well-formed; the good stanza only';

# each input below is malformed for expat (XML::Parser): checked first

my @malformed = (
	['mismatched end tag', msg('b1', '<body></bodx>')],
	['end tag with a longer name', msg('b2', '<body></bodyx>')],
	['unclosed quote, then >', "<message from='$FROM' to='$TO' id='b3>"
		. '<body>x</body></message>'],
	['< in an attribute value', msg('b4', "<body a='<'/>")],
	['duplicate attribute', msg('b5', "<body a='1' a='2'/>")],
	['duplicate attribute on the stanza',
		"<message from='$FROM' to='$TO' id='b6' id='b6'/>"],
	['no whitespace between attributes', msg('b7', "<body a='1'b='2'/>")],
	['undefined entity', msg('b8', '<body>&foo;</body>')],
	['&#0;', msg('b9', '<body>&#0;</body>')],
	['&#xD800;', msg('b10', '<body>&#xD800;</body>')],
	['&#xFFFE;', msg('b11', '<body>&#xFFFE;</body>')],
	['&#x110000;', msg('b12', "<body a='&#x110000;'/>")],
	['& alone', msg('b13', '<body>a & b</body>')],
	['overlong UTF-8 \xC0\xAF', msg('b14', "<body>\xC0\xAF</body>")],
	['UTF-8 surrogate \xED\xA0\x80', msg('b15', "<body>\xED\xA0\x80</body>")],
	['byte \xFF', msg('b16', "<body>\xFF</body>")],
	['truncated UTF-8, then ASCII', msg('b17', "<body>\xE2\x82x</body>")],
	['invalid UTF-8 in a value', msg('b18', "<body a='\xF4\x90\x80\x80'/>")],
	['U+FFFF in UTF-8', msg('b19', "<body>\xEF\xBF\xBF</body>")],
	['control \x01 in text', msg('b20', "<body>a\x01b</body>")],
	['control \x01 in a value', msg('b21', "<body a='\x01'/>")],
	['NUL in a value of the stanza', "<message from='$FROM' to='$TO'"
		. " id='b22\x00'/>"],
	[']]> in text', msg('b23', '<body>a]]>b</body>')],
	['element name starting with a digit', msg('b24', '<1x/>')],
	['unbound prefix', msg('b25', '<foo:bar/>')],
	['unbound prefix on an attribute', msg('b26', "<body foo:a='1'/>")],
	['default namespace bound to the xml namespace',
		msg('b27', "<x xmlns='http://www.w3.org/XML/1998/namespace'/>")],
	['end tag with an attribute', msg('b28', "<body></body a='1'>")],
	['mismatch 40 levels deep', msg('b29', ('<d>' x 40) . '</e>'
		. ('</d>' x 40))],
	['duplicate as the 17th attribute', msg('b30', '<y '
		. join(' ', map { "a$_='$_'" } 1 .. 16) . " a3='x'/>")],
	['from twice on the stanza',
		"<message from='$FROM' to='$TO' id='b33' from='$FROM'/>"],
	['to twice on the stanza',
		"<message to='$TO' from='$FROM' to='$TO' id='b34'/>"],
	['type twice on the stanza',
		"<message from='$FROM' to='$TO' type='chat' id='b35' type='x'/>"],
	['type twice on a child', msg('b36', "<body type='a' type='a'/>")],
	['xmlns twice on a child',
		msg('b37', "<x xmlns='urn:a' xmlns='urn:a'/>")],
	['id twice among others', msg('b38', "<x a='1' id='2' b='3' id='2'/>")],
	['from twice, the second with spaces around =',
		"<message from='$FROM' to='$TO' id='b39' from = '$FROM'/>"],
	['to twice, the first with a tab before it',
		"<message\tto='$TO' from='$FROM' to='$TO' id='b40'/>"],
	['id twice, in either quotes',
		"<message from='$FROM' to='$TO' id='b41' id=\"b41\"/>"],
	['xmlns twice on the stanza',
		"<message xmlns='jabber:server' from='$FROM' to='$TO'"
		. " xmlns='jabber:server'/>"],
	['no whitespace before a known attribute',
		"<message from='${FROM}'to='$TO' id='b44'/>"],
	['known attribute without a value', "<message from='$FROM' to= id='b43'/>"],
	['stanza name with an unbound prefix',
		"<message:x from='$FROM' to='$TO'/>"],
	['end tag of 7 bytes, the 7th other', msg('b45', '<abcdefg></abcdefh>')],
	['end tag of 8 bytes, the 8th other',
		msg('b46', '<abcdefgh></abcdefgi>')],
	['end tag of 8 bytes, the 1st other',
		msg('b47', '<abcdefgh></xbcdefgh>')],
	['end tag of 9 bytes, the 9th other',
		msg('b48', '<abcdefghi></abcdefghj>')],
	['text between stanzas', "hello " . msg('b31')],
	['stanza end tag missing, next stanza inside',
		"<message from='$FROM' to='$TO' id='b32'><body>x</body>"
		. msg('b32b') . "</stream:stream>"],
);

my @bad_inputs = grep { well_formed($_->[1]) } @malformed;
is(join(', ', map { $_->[0] } @bad_inputs), '',
	'inputs of part 2 are malformed for XML::Parser');

for my $m (@malformed) {
	is(refused($m->[1]), $NWF, "$m->[0]: not-well-formed");
}

# names that start like a stanza's: well-formed, not stanzas

for my $name (qw/ messages message-x message.x Message iq2 i presenc /) {
	is(refused("<$name from='$FROM' to='$TO' id='n1'/>"),
		'unsupported-stanza-type; the good stanza only',
		"<$name/> at the top: unsupported-stanza-type");
}

# shorter than the stanza name its first letter stands for, at the end of
# the bytes read: refused at once, not waited on

for my $name (qw/ p m mess i /) {
	is(refused("<$name/>"), 'unsupported-stanza-type; the good stanza only',
		"<$name/> alone at the top: unsupported-stanza-type");
}

is(refused(msg('r1', '<body><!-- hi --></body>')),
	'restricted-xml; the good stanza only', 'comment: restricted-xml');
is(refused(msg('r2', "<body><?pi x?></body>")),
	'restricted-xml; the good stanza only', 'PI: restricted-xml');
is(refused("<message xmlns='jabber:client' from='$FROM' to='$TO'/>"),
	'invalid-namespace; the good stanza only',
	'stanza in jabber:client: invalid-namespace');

# a good stanza and a bad one in the same write: the good one goes

is(refused(msg('b50', '<body></bodx>'), together => 1), $NWF,
	'good stanza, then a malformed one in the same write');
is(refused(msg('b51', '<body>&foo;</body>'), together => 1,
		good => msg('good', '<body><![CDATA[by expat]]></body>')), $NWF,
	'good stanza by expat, then a malformed one in the same write');
is(refused("<message from='mallory\@litware.example' to='$TO'/>",
		together => 1), 'invalid-from; the good stanza only',
	'good stanza, then a spoofed one in the same write');

# a domain named in a JID's local part or resource is not its domain

for my $jid ('fabrikam.example@evil.example', 'fabrikam.example@a.example',
	'fabrikam.example@example', 'litware.example/fabrikam.example',
	'a@litware.example/@fabrikam.example',
	'fabrikam.example@litware.example/x/fabrikam.example')
{
	is(refused("<message from='$jid' to='$TO'/>"),
		'invalid-from; the good stanza only',
		"from='$jid' (" . length($jid) . ' bytes): invalid-from');
}

# a control character and a stray UTF-8 continuation byte where the
# text scan reads 64 and 32 bytes at a time

for my $k (0, 31, 32, 63, 64, 100) {
	is(refused(msg("c$k", '<body>' . ('x' x $k) . "\x01"
			. ('y' x 140) . '</body>')), $NWF,
		"control character at offset $k of a body: not-well-formed");
	is(refused(msg("u$k", '<body>' . ('x' x $k) . "\x80"
			. ('y' x 140) . '</body>')), $NWF,
		"UTF-8 continuation byte alone at offset $k: not-well-formed");
}

# split: the scan waits, then expat decides

is(refused(msg('b40', "<body>\xC0\xAF</body>"), slowly => 0.002), $NWF,
	'invalid UTF-8, byte by byte: not-well-formed');
is(refused(msg('b41', "<body a='1' a='2'/>"), pieces => 3), $NWF,
	'duplicate attribute in 3 pieces: not-well-formed');
is(refused(msg('b42', "<body>a]]>b</body>"), pieces => [length("<message"
		. " from='$FROM' to='$TO' id='b42'><body>a]]")]), $NWF,
	']]> split before >: not-well-formed');

# between stanzas, a reference or a character split: nothing of it goes

is(refused(" &a" . "mp;", pieces => [3], pause => 0.3), $NWF,
	'reference between stanzas, split: not-well-formed, nothing relayed');
is(refused("\n\xC3" . "\xA9", pieces => [2], pause => 0.3), $NWF,
	'UTF-8 character between stanzas, split: not-well-formed, nothing'
	. ' relayed');

# over xmpp_federation_max_stanza_size, 4k on 8082; the size counts from
# the stanza's '<' to its last '>'

my $fill = msg('big', '<body></body>');
my $exact = msg('big', '<body>' . ('x' x ($MAX - length $fill)) . '</body>');
my $exact_cdata = msg('bigc', '<body><![CDATA[' . ('x' x ($MAX
	- length(msg('bigc', '<body><![CDATA[]]></body>')))) . ']]></body>');

my $x = authenticated(8082);
$x->send($exact . $exact_cdata);
wait_relayed($x, 2 * $MAX);
is(relayed($x), $exact . $exact_cdata,
	'stanzas of exactly max_stanza_size relayed, scan and expat');
$x->send('</stream:stream>');
$x->read_until(qr{</stream:stream>});
$x = undef;

my $over = $exact =~ s/<body>/<body>x/r;
my $over_cdata = $exact_cdata =~ s/CDATA\[/CDATA[x/r;

is(refused($over, port => 8082), 'policy-violation; the good stanza only',
	'one byte over max_stanza_size: policy-violation');
is(refused($over_cdata, port => 8082),
	'policy-violation; the good stanza only',
	'one byte over max_stanza_size, expat: policy-violation');
is(refused($over, port => 8082, pieces => 8, pause => 0.01),
	'policy-violation; the good stanza only',
	'one byte over max_stanza_size, in 8 pieces: policy-violation');
is(refused(msg('huge', '<body>' . ('z' x 20000) . '</body>'), port => 8082),
	'policy-violation; the good stanza only',
	'stanza of 20 kB: policy-violation');
is(refused("<message from='$FROM' to='$TO' id='" . ('t' x 8000),
		port => 8082),
	'policy-violation; the good stanza only',
	'start tag over max_stanza_size, incomplete: policy-violation');

# a namespace name with a space: the scan and expat must agree on it

sub fate {
	my ($data, %o) = @_;

	my $x = authenticated();

	if ($o{slowly}) {
		$x->send_slowly($data, $o{slowly});
	} else {
		$x->send($data);
	}

	my $marker = msg('fate');
	$x->send($marker);

	my ($got, $cond) = outcome($x, $marker);
	$x->closed(timeout => 0.5) if $got ne 'relayed';

	return $got eq 'relayed' ? 'relayed' : "$got " . ($cond // '');
}

my $ns_space = msg('ns1', "<x xmlns='urn:a b'/>");

is(fate($ns_space), fate($ns_space, slowly => 0.002),
	'namespace name with a space: same fate in one write and byte by byte');
is(fate($ns_space), fate(msg('ns2', "<x xmlns='urn:a b'/><![CDATA[x]]>")),
	'namespace name with a space: same fate with and without CDATA');

# long text: the scan takes 32 bytes at a time, 64 where the CPU has AVX2;
# a byte to look at in any place of such a block stops it

my $plain = 'Lorem ipsum dolor sit amet, consectetur adipiscing elit. ' x 5;
my (@wrong, @changed);

for my $at (0, 1, 31, 32, 33, 63, 64, 65, 127, 200) {
	for my $bad ("\x01", "]]>", "\xFF", "& ") {
		my $text = $plain;
		substr($text, $at, 0, $bad);

		my $r = refused(msg("l$at", "<body>$text</body>"));
		push @wrong, "$at " . esc($bad) . ": $r" unless $r eq $NWF;
	}

	my $text = $plain;
	substr($text, $at, 0, "\xC3\xA9 &amp; &#x1F600; \t> \x7F");

	my $good = msg("g$at", "<body>$text</body>");
	my $x = authenticated();
	$x->send($good);
	wait_relayed($x, length $good);
	push @changed, $at unless relayed($x) eq $good;
	$x->send('</stream:stream>');
	$x->read_until(qr{</stream:stream>});
}

ok(!@wrong, 'long text, a control, "]]>", a byte not UTF-8 or a bare "&"'
	. ' in 10 places of the scan\'s blocks: not-well-formed')
	or diag(join "\n", @wrong);
ok(!@changed, 'long text, UTF-8, references, a tab, ">" and DEL in 10'
	. ' places: relayed as sent') or diag("changed at @changed");

# the end of the stream after relayed stanzas, as the scan finds it or
# leaves it to expat: a clean end (our </stream:stream>, the connection
# closed, the stanzas at the gateway), or a stream error; what follows
# the end is not relayed

sub ends {
	my ($end, %o) = @_;

	my $x = authenticated();
	my $good = msg('e1', '<body>before the end</body>');

	$x->send($good);
	wait_relayed($x, length $good);

	if ($o{pieces}) {
		send_pieces($x, $end, $o{pieces});
	} else {
		$x->send($end);
	}

	my $answer = $x->read_until(qr{</stream:stream>}, timeout => 5);
	my $error = defined $answer && $answer =~ /<stream:error>/;
	my $cond = $error ? ($answer =~ /<([a-z-]+) xmlns=/)[0] : undef;
	my $closed = $x->closed();
	settle();

	my $got = relayed_final(relayed($x)) =~ s/[ \t\r\n]+\z//r;

	return ($error ? $cond : defined $answer ? 'end' : 'no end')
		. ($closed ? ' closed' : ' open') . '; '
		. ($got eq $good . ($o{also} // '') ? 'the good stanza only'
			: 'gateway got ' . esc($got));
}

my $END = 'end closed; the good stanza only';

is(ends('</stream:stream>'), $END, 'stream end: clean');
is(ends("  \n</stream:stream \t\r\n>"), $END,
	'stream end with whitespace before and in the tag: clean');
is(ends('</stream:stream>', pieces => [3, 9]), $END,
	'stream end in three pieces: clean');
is(ends('</stream:stream>' . msg('e2', '<body>after</body>')), $END,
	'a stanza after the stream end: not relayed');
is(ends("\n" . msg('e3', '<body>last</body>') . '</stream:stream>',
		also => "\n" . msg('e3', '<body>last</body>')), $END,
	'stanza and stream end in one write: both relayed, clean end');
is(ends('</stream:streamx>'), 'not-well-formed closed; the good stanza only',
	'end tag with a longer name: not-well-formed');
is(ends('</stream:strea>'), 'not-well-formed closed; the good stanza only',
	'end tag with a shorter name: not-well-formed');
is(ends('</stream>'), 'not-well-formed closed; the good stanza only',
	'end tag without the prefix: not-well-formed');
is(ends('</stream:stream/>'), 'not-well-formed closed; the good stanza only',
	'end tag with a slash: not-well-formed');

###############################################################################

# part 3: differential fuzz.  Valid stanzas, mutated at random (fixed
# seed), each followed by a marker stanza; expat decides what the edge
# must do with them.  One stream while nothing ends it.  For a longer
# hunt: TEST_XMPP_FUZZ_SEED and TEST_XMPP_FUZZ_CASES (default 42, 500).

srand($ENV{TEST_XMPP_FUZZ_SEED} // 42);

my @templates = (
	"<message from='$FROM' to='$TO' id='f1' type='chat' xml:lang='en'>"
		. "<body>Hi &amp; caf\xC3\xA9 &#x1F600; \"q\" 'a' &gt; ]</body>"
		. "<thread>t1</thread></message>",
	"<presence from=\"$FROM/r\" to=\"$TO\"><show>away</show>"
		. "<status xml:lang=\"de\">M\xC3\xBCde &lt;3</status>"
		. "<c xmlns=\"http://jabber.org/protocol/caps\" hash=\"sha-1\""
		. " node=\"n\" ver=\"v=\"/></presence>",
	"<iq type='get' id='q1' from='$FROM' to='contoso.example'>"
		. "<query xmlns='jabber:iq:version'/></iq>",
	"<message from='$FROM' to='$TO'><x xmlns='jabber:x:data' type='form'>"
		. "<field var='a&gt;b'><value>1 &lt; 2</value></field></x>"
		. "<body>\xE2\x82\xAC\xF0\x9F\x98\x80</body></message>",
	"<message xmlns='jabber:server' from='$FROM' to='$TO' id='c'>"
		. "<body><![CDATA[<b>x</b>]]></body>"
		. "<html xmlns='http://jabber.org/protocol/xhtml-im'>"
		. "<body xmlns='http://www.w3.org/1999/xhtml'>"
		. "<p style='a:b'>t<br/></p></body></html></message>",
	"<message from='$FROM' to='$TO' id='long'><body>"
		. ('Lorem ipsum dolor sit amet, ' x 8) . "</body></message>",
);

# the bytes put in: markup (more often), controls, bytes from 0x7F,
# whole UTF-8 characters

my @markup = split //, "<>&;'\"/=:!?] ";
my @control = map { chr } 0 .. 0x1f;
my @high = ((map { chr } 0x7f, 0x80, 0xa0, 0xbf, 0xc0, 0xc1, 0xc3, 0xe0,
		0xe2, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xf8, 0xfe, 0xff),
	"\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "\xEF\xBF\xBE",
	"\xED\xA0\x80", "\xE0\x80\xBC");

sub byte_in {
	my $r = rand();
	my $set = $r < 0.6 ? \@markup : $r < 0.8 ? \@control : \@high;
	return $set->[int(rand(@$set))];
}

sub mutate {
	my ($s) = @_;

	my $r = rand();
	my $n = $r < 0.75 ? 1 : $r < 0.95 ? 2 : 3;

	for (1 .. $n) {
		my $op = int(rand(4));
		my $pos = int(rand(length $s));
		my $c = byte_in();

		if ($op == 0) {
			substr($s, $pos, 0, $c);
		} elsif ($op == 1) {
			substr($s, $pos, 1, '');
		} elsif ($op == 2) {
			substr($s, $pos, 1, $c);
		} else {
			# a piece again: attributes, tags, references twice
			my $len = 1 + int(rand(12));
			substr($s, $pos, 0, substr($s, int(rand(length $s)), $len));
		}
	}

	return $s;
}

# polls the gateway for the marker and the stream for an error

sub outcome {
	my ($x, $marker) = @_;

	my $deadline = time() + scaled(4);

	while (time() < $deadline) {
		return ('relayed') if index(relayed($x), $marker) >= 0;

		my $closed = $x->closed(timeout => 0.01);

		if ($x->pending() =~ /<stream:error>/) {
			return ('error', $x->stream_error(timeout => 0) // '');
		}

		return ('closed') if $closed;
	}

	return ('timeout');
}

my $CASES = $ENV{TEST_XMPP_FUZZ_CASES} // 500;
my $start = time();
my (@cases, $fx);

for my $n (1 .. $CASES) {
	my $mutated = mutate($templates[($n - 1) % @templates]);
	my $marker = "<message from='$FROM' to='$TO' id='mk$n'/>";

	my $data = $mutated . $marker;
	my $e = expected(expat_view($data));

	if (!defined $e->{error} && !$e->{complete}) {
		# expat waits for more: a NUL ends any construct, badly
		$data .= "\x00";
		$e = expected(expat_view($data));
	}

	$fx //= authenticated();

	if ($n % 4 == 1) {
		send_pieces($fx, $data, [int(rand(length $data))], 0.015);
	} elsif ($n % 8 == 2) {
		send_pieces($fx, $data, 5, 0.005);
	} else {
		$fx->send($data);
	}

	my ($got, $cond) = outcome($fx, $marker);

	push @cases, { n => $n, idx => $fx->{_idx}, mutated => $mutated,
		data => $data, marker => $marker, exp => $e, got => $got,
		cond => $cond };

	if ($got ne 'relayed') {
		$fx->closed(timeout => 2);
		$fx = undef;
	}
}

if ($fx) {
	$fx->send('</stream:stream>');
	$fx->read_until(qr{</stream:stream>});
	$fx = undef;
}

my $elapsed = time() - $start;
note(sprintf('fuzz: %d cases in %.1fs', $CASES, $elapsed));

###############################################################################

# the stanzas that go to the gateway are flushed when nginx stops

$t->stop();
settle();

my $log = gateway_log();

my (@disagree, @wrongcond, @inexact, @leaked, @lost, @malformed_relayed);
my ($nrelay, $nerror, $neither, %at) = (0, 0, 0);

for my $c (@cases) {
	my $e = $c->{exp};
	my $what = "case $c->{n}: " . esc($c->{data});

	my $want = defined $e->{error} ? 'error' : 'relayed';

	if ($e->{either}) {
		$neither++;
	} elsif ($want eq 'error') {
		$nerror++;
	} else {
		$nrelay++;
	}

	# the outcome: relayed when expat finds nothing to refuse

	if ($e->{either}) {
		# either

	} elsif ($c->{got} ne $want) {
		push @disagree, "$what: expat says $want"
			. (defined $e->{error} ? " ($e->{error})" : '')
			. ", edge: $c->{got} " . ($c->{cond} // '');

	} elsif ($want eq 'error' && $e->{error} ne '*'
		&& $c->{cond} ne $e->{error})
	{
		push @wrongcond, "$what: $c->{cond}, expected $e->{error}";

	} elsif ($want eq 'error' && !length $c->{cond}) {
		push @wrongcond, "$what: stream error without a condition";
	}

	# the bytes of this case on its stream: up to its marker, or the rest

	my $r = relayed($c->{idx}, $log);
	my $pos = $at{$c->{idx}} // 0;
	my $seg;

	if ($c->{got} eq 'relayed') {
		my $m = index($r, $c->{marker}, $pos);
		$seg = $m >= 0 ? substr($r, $pos, $m - $pos) : substr($r, $pos);
		$at{$c->{idx}} = $m >= 0 ? $m + length $c->{marker} : length $r;
	} else {
		$seg = relayed_final(substr($r, $pos));
		$at{$c->{idx}} = length $r;
	}

	if ($c->{got} eq 'relayed') {
		# the mutated bytes exactly, whether expat agreed or not
		push @inexact, "$what: gateway got " . esc($seg)
			if $seg ne $c->{mutated};
		next;
	}

	next if $e->{either} || $want ne 'error';

	# refused: the complete stanzas before the refused one go, and
	# nothing else but whitespace

	my $got = $seg =~ s/^[ \t\r\n]+|[ \t\r\n]+\z//gr;
	my $exp = $e->{relay} =~ s/^[ \t\r\n]+|[ \t\r\n]+\z//gr;

	next if $got eq $exp;

	if (length $got <= length $exp && $got eq substr($exp, 0, length $got)) {
		push @lost, "$what: gateway got " . esc($seg)
			. ', not all of ' . esc($e->{relay});
	} else {
		push @leaked, "$what: gateway got " . esc($seg)
			. ', expected ' . esc($e->{relay});
	}
}

# whatever reached the gateway, on any stream of this file, is XML

my @streams = split /\nVERIFY [^\n]*\n/, $log, -1;

for my $i (1 .. $#streams) {
	my $r = relayed_final(relayed($i, $log));
	push @malformed_relayed, "stream $i: " . esc($r)
		unless well_formed($r);
}

ok(!@disagree, "fuzz: edge and expat agree on all $CASES mutated stanzas")
	or diag(join("\n", @disagree));
ok(!@wrongcond, 'fuzz: each malformed stanza got the right stream error')
	or diag(join("\n", @wrongcond));
ok(!@inexact, 'fuzz: relayed stanzas byte for byte')
	or diag(join("\n", @inexact));
ok(!@leaked, 'fuzz: nothing of a refused stanza relayed')
	or diag(join("\n", @leaked));
ok(!@lost, 'fuzz: complete stanzas before a refused one relayed')
	or diag(join("\n", @lost));
ok(!@malformed_relayed, 'everything the gateway received is well-formed')
	or diag(join("\n", @malformed_relayed));
ok($nrelay >= 40 && $nerror >= 40, "fuzz: both outcomes exercised"
	. " ($nrelay relayed, $nerror refused, $neither either)");
ok($elapsed < scaled(45 * $CASES / 500), 'fuzz: in time')
	or diag("fuzz took ${elapsed}s");

###############################################################################
