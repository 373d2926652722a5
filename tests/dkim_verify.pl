#!/usr/bin/perl
# Independent DKIM check with Perl's Mail::DKIM, fully offline.
#
#   perl dkim_verify.pl RECORDS < message.eml
#
# RECORDS has one DNS TXT record a line: "<selector>._domainkey.<domain> <value>", for
# example "s1._domainkey.example.org v=DKIM1; k=ed25519; p=...". Names not in the file
# do not exist (NXDOMAIN); nothing is asked of the real DNS.
#
# Prints one line per DKIM-Signature, in message order:
#   <result> a=<algorithm> d=<domain> s=<selector> <details>
# where <result> is Mail::DKIM's own (pass, fail, invalid, ...). Exit status 0 when the
# message was read, whatever the results; the caller judges each line.
#
# Debian 12 ships Mail::DKIM 1.20230212, which predates Ed25519 (RFC 8463, added upstream
# in 1.20230630). When the installed Mail::DKIM lacks it, this script adds the algorithm
# the way upstream does: Mail::DKIM still parses, canonicalises and hashes (that is what
# is being checked), and CryptX's Crypt::PK::Ed25519 (Debian: libcryptx-perl) checks the
# signature over the SHA-256 header hash.
use strict;
use warnings;

use MIME::Base64 qw(decode_base64);
use Mail::DKIM::Verifier;
use Mail::DKIM::Algorithm::rsa_sha256;
use Net::DNS;

my $records_file = shift @ARGV or die "usage: $0 RECORDS < message\n";
my %records;
open my $fh, '<', $records_file or die "cannot read $records_file: $!\n";
while ( my $line = <$fh> ) {
    $line =~ s/\r?\n\z//;
    next if $line =~ /^\s*(#|$)/;
    my ( $name, $value ) = split /\s+/, $line, 2;
    $name =~ s/\.\z//;
    $records{ lc $name } = $value;
}
close $fh;

{
    no warnings 'redefine';
    *Mail::DKIM::DNS::query = sub {
        my ( $name, $type ) = @_;
        $name =~ s/\.\z//;
        return () unless $type eq 'TXT' && exists $records{ lc $name };
        # A TXT string holds at most 255 bytes; a 2048-bit key needs several.
        my @strings = unpack '(a255)*', $records{ lc $name };
        return Net::DNS::RR->new( owner => $name, type => 'TXT', txtdata => \@strings );
    };
}

unless ( eval { require Mail::DKIM::Algorithm::ed25519_sha256; 1 } ) {
    add_ed25519();
}

my $verifier = Mail::DKIM::Verifier->new();
binmode STDIN;
while ( my $line = <STDIN> ) {
    $line =~ s/\r?\n\z/\015\012/;
    $verifier->PRINT($line);
}
$verifier->CLOSE;

for my $signature ( $verifier->signatures ) {
    printf "%s a=%s d=%s s=%s %s\n",
      $signature->result,
      $signature->algorithm // '',
      $signature->domain    // '',
      $signature->selector  // '',
      $signature->result_detail // '';
}
exit 0;

sub add_ed25519 {
    require Crypt::PK::Ed25519;
    no warnings 'redefine';

    my $algorithm_class = \&Mail::DKIM::Signature::get_algorithm_class;
    *Mail::DKIM::Signature::get_algorithm_class = sub {
        my ( $self, $algorithm ) = @_;
        return 'Sealpost::Test::Ed25519Sha256' if $algorithm eq 'ed25519-sha256';
        return $algorithm_class->(@_);
    };

    my $hash_algorithm = \&Mail::DKIM::Signature::hash_algorithm;
    *Mail::DKIM::Signature::hash_algorithm = sub {
        my ($self) = @_;
        return 'sha256' if ( $self->algorithm // '' ) eq 'ed25519-sha256';
        return $hash_algorithm->(@_);
    };

    my $check = \&Mail::DKIM::PublicKey::check;
    *Mail::DKIM::PublicKey::check = sub {
        my ($self) = @_;
        return $check->(@_) unless ( $self->get_tag('k') // 'rsa' ) eq 'ed25519';
        my $v = $self->get_tag('v');
        die "unsupported version\n" if defined $v && $v ne 'DKIM1';
        my $p = $self->data;
        die "missing p= tag\n" unless defined $p;
        die "revoked\n" if $p eq '';
        my $raw = decode_base64($p);
        die "invalid data\n" unless length $raw == 32;
        my $key = Crypt::PK::Ed25519->new;
        $key->import_key_raw( $raw, 'public' );
        $self->cork( Sealpost::Test::Ed25519Key->new($key) );
        return 1;
    };
}

package Sealpost::Test::Ed25519Key;

# What Mail::DKIM asks of a key object ("cork"): its size, for the key-length check.
sub new { my ( $class, $key ) = @_; return bless { key => $key }, $class }
sub size { return 32 }
sub verify_digest_signature {
    my ( $self, $digest, $signature ) = @_;
    return $self->{key}->verify_message( $signature, $digest );
}

package Sealpost::Test::Ed25519Sha256;

# RFC 8463: the same relaxed canonicalisation and SHA-256 digests as rsa-sha256; the
# Ed25519 signature is over the 32-byte header hash.
use parent -norequire, 'Mail::DKIM::Algorithm::rsa_sha256';

sub verify {
    my ($self) = @_;
    my $signature = MIME::Base64::decode_base64( $self->signature->data );
    my $public_key = $self->signature->get_public_key;
    my $cork = $public_key->cork;
    die "key type does not match the ed25519-sha256 algorithm\n"
      unless ref $cork eq 'Sealpost::Test::Ed25519Key';
    my $digest = $self->{header_digest}->digest;
    unless ( $cork->verify_digest_signature( $digest, $signature ) ) {
        $self->{verification_details} = "message has been altered";
        return;
    }
    return $self->check_body_hash;
}
