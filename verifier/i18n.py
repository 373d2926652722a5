"""Every string a user reads, in French (the default) and English.

Keys are stable identifiers; the report model and the templates refer to them only by key.
A missing translation is a bug the tests catch (every key has both languages).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

LANGUAGES = ("fr", "en")
DEFAULT = "fr"

# key: (French, English). Placeholders use str.format names.
MESSAGES: dict[str, tuple[str, str]] = {
    # --- verdicts, in words first ---
    "verdict_authentic": ("Authentique", "Authentic"),
    "verdict_altered": (
        "Documents authentiques, message modifié",
        "Documents authentic, message altered",
    ),
    "verdict_tampered": ("Falsifié", "Tampered"),
    "verdict_unsigned": ("Non signé par la Caisse", "Not signed by the fund"),
    "verdict_not_email": ("Pas un e-mail lisible", "Not a readable email"),
    # --- why ---
    "reason_authentic": (
        "Le message et chacun de ses documents portent une signature valide de la Caisse : "
        "ils sont tels qu'elle les a envoyés.",
        "The message and each of its documents carry a valid signature of the fund: "
        "they are exactly as the fund sent them.",
    ),
    "reason_pair_authentic": (
        "Le document porte une signature valide de la Caisse : il est tel qu'elle l'a émis.",
        "The document carries a valid signature of the fund: it is exactly as the fund issued it.",
    ),
    "reason_altered_body": (
        "Chaque document est authentique, mais le corps du message a changé depuis l'envoi "
        "(transfert, ré-encodage par un serveur de messagerie, pied de page ajouté).",
        "Every document is authentic, but the body of the message changed after it was sent "
        "(forwarded, re-encoded by a mail server, a footer added).",
    ),
    "reason_altered_header": (
        "Chaque document est authentique, mais un en-tête signé du message a changé "
        "(par exemple l'objet, l'expéditeur ou la date).",
        "Every document is authentic, but a signed header of the message changed "
        "(for example the subject, the sender or the date).",
    ),
    "reason_altered_no_dkim": (
        "Chaque document est authentique, mais le message ne porte plus la signature de la "
        "Caisse : il a probablement été transféré ou recomposé.",
        "Every document is authentic, but the message no longer carries the fund's "
        "signature: it was probably forwarded or rewritten.",
    ),
    "reason_altered_headers": (
        "Les documents portent une signature valide de la Caisse, mais l'en-tête du message "
        "a été trafiqué d'une façon que la Caisse ne produit jamais : l'expéditeur, l'objet ou "
        "l'adresse de réponse que votre messagerie affiche peuvent ne pas être ceux de la "
        "Caisse. Ne vous fiez qu'aux documents.",
        "The documents carry a valid signature of the fund, but the message's header was "
        "tampered with in a way the fund never produces: the sender, subject or reply "
        "address your mail program shows may not be the fund's. Rely on the documents only.",
    ),
    "reason_unsealed_attachment": (
        "Le message contient une pièce jointe que la Caisse n'a pas scellée, à côté de "
        "documents scellés, et sa signature ne couvre plus le message : cette pièce a été "
        "ajoutée ou remplacée après l'envoi.",
        "The message carries an attachment the fund did not seal, next to sealed documents, "
        "and the fund's signature no longer covers the message: that attachment was added "
        "or replaced after sending.",
    ),
    "reason_out_of_service": (
        "Une signature a été faite avec une clé de la Caisse en dehors de sa période de "
        "service (avant sa mise en service ou après son retrait) : la Caisse ne l'a pas "
        "faite.",
        "A signature was made with a fund key outside its time of service (before it was "
        "put into service or after it was retired): the fund did not make it.",
    ),
    "reason_not_logged": (
        "Ce sceau a été fait après la mise en service du journal des décomptes, mais le "
        "journal ne le contient pas : la Caisse ne l'a pas émis (clé volée, ou entrée "
        "retirée du journal).",
        "This seal was made after the statement log was put into service, but the log does "
        "not hold it: the fund did not issue it (a stolen key, or an entry removed from the "
        "log).",
    ),
    "reason_document_invalid": (
        "Au moins un document ne correspond pas à sa signature, ou a été signé par une clé "
        "qui n'est pas celle de la Caisse. Ne vous y fiez pas.",
        "At least one document does not match its signature, or was signed by a key that "
        "is not the fund's. Do not rely on it.",
    ),
    "reason_revoked": (
        "Une signature n'est valide qu'avec une clé que la Caisse a révoquée (clé "
        "compromise). Ne vous y fiez pas : demandez une nouvelle copie à la Caisse.",
        "A signature verifies only with a key the fund has revoked (a compromised key). "
        "Do not rely on it: ask the fund for a fresh copy.",
    ),
    "reason_unsigned": (
        "Rien dans ce message n'est signé par les clés de la Caisse.",
        "Nothing in this message is signed by the fund's keys.",
    ),
    "reason_unsigned_broken": (
        "Le message porte une signature au nom de la Caisse, mais elle ne correspond plus et "
        "aucun document signé ne l'accompagne : rien ne peut être prouvé.",
        "The message carries a signature in the fund's name, but it no longer matches and "
        "no signed document comes with it: nothing can be proven.",
    ),
    "reason_not_email_empty": ("Le fichier envoyé est vide.", "The uploaded file is empty."),
    "reason_not_email_outlook_msg": (
        "Ce fichier est un message Outlook (.msg), pas un e-mail standard. Dans Outlook, "
        "ouvrez le message, puis Fichier › Enregistrer sous › type « Format Internet "
        "(.eml) » si votre version le propose ; sinon faites glisser le message vers le "
        "bureau depuis Outlook sur le web ou utilisez « Transférer en tant que pièce "
        "jointe » vers votre adresse et enregistrez la pièce jointe .eml.",
        "This file is an Outlook message (.msg), not a standard email. In Outlook, open "
        'the message, then File › Save As › type "Internet format (.eml)" if your '
        "version offers it; otherwise drag the message to the desktop from Outlook on the "
        'web, or use "Forward as attachment" to yourself and save the attached .eml.',
    ),
    "reason_not_email_pdf_alone": (
        "Ce fichier est un PDF seul. Envoyez l'e-mail reçu (.eml), ou le PDF avec son "
        "fichier de signature .p7s.",
        "This file is a PDF on its own. Upload the email you received (.eml), or the PDF "
        "together with its .p7s signature file.",
    ),
    "reason_not_email_p7s_alone": (
        "Ce fichier semble être une signature .p7s seule. Envoyez-la avec le document "
        "qu'elle signe.",
        "This file looks like a .p7s signature on its own. Upload it together with the "
        "document it signs.",
    ),
    "reason_not_email_no_headers": (
        "Ce fichier n'est pas un e-mail : il ne commence pas par des en-têtes de message. "
        "Enregistrez le message depuis votre messagerie au format .eml.",
        "This file is not an email: it does not start with message headers. Save the "
        "message from your mail program in .eml format.",
    ),
    "reason_not_email_too_complex": (
        "Ce message est trop imbriqué ou compte trop de parties pour être vérifié.",
        "This message is nested too deeply or has too many parts to be checked.",
    ),
    "reason_not_email_unreadable": (
        "Ce fichier n'a pas pu être lu comme un e-mail.",
        "This file could not be read as an email.",
    ),
    "reason_not_email_bad_pair": (
        "Envoyez un document et son fichier de signature .p7s.",
        "Upload one document and its .p7s signature file.",
    ),
    # --- DKIM ---
    "dkim_pass": ("Valide", "Valid"),
    "dkim_fail": ("Ne correspond plus", "No longer matches"),
    "dkim_revoked": ("Clé révoquée", "Revoked key"),
    "dkim_unknown_key": ("Clé inconnue", "Unknown key"),
    "dkim_not_fund": (
        "Signature d'un autre domaine (non vérifiée)",
        "Another domain's signature (not checked)",
    ),
    "dkim_invalid": ("Illisible", "Unreadable"),
    "dkim_reason_body_changed": (
        "le corps du message a changé",
        "the body of the message changed",
    ),
    "dkim_reason_header_changed": (
        "un en-tête signé a changé (objet, expéditeur, date…)",
        "a signed header changed (subject, sender, date…)",
    ),
    "dkim_reason_unknown_selector": (
        "la Caisse n'a jamais publié ce sélecteur",
        "the fund never published this selector",
    ),
    "dkim_reason_revoked_key": (
        "la clé a été révoquée par la Caisse",
        "the fund revoked this key",
    ),
    "dkim_reason_headers_malformed": (
        "l'en-tête du message contient ce que la Caisse n'émet jamais (voir ci-dessous) : "
        "des logiciels différents y liraient des choses différentes",
        "the message header holds what the fund never emits (see below): different "
        "programs would read different things in it",
    ),
    "dkim_reason_header_not_signed": (
        "un champ affiché (expéditeur, objet, réponse...) ou la structure du message "
        "(Content-Type) est hors de la signature",
        "a shown field (sender, subject, reply-to...) or the message's structure "
        "(Content-Type) is outside the signature",
    ),
    "dkim_reason_signed_after_retirement": (
        "signée après le retrait de la clé : la Caisse ne signait plus avec elle",
        "signed after the key was retired: the fund no longer signed with it",
    ),
    "dkim_reason_signed_before_activation": (
        "signée avant la mise en service de la clé",
        "signed before the key was put into service",
    ),
    "dkim_reason_no_timestamp": (
        "la signature n'indique pas son heure (t=), que la Caisse écrit toujours",
        "the signature does not state its time (t=), which the fund always writes",
    ),
    "dkim_reason_logged_before_compromise": (
        "clé révoquée depuis, mais le journal prouve que la signature existait avant la "
        "compromission",
        "key revoked since, but the log proves the signature existed before the compromise",
    ),
    "dkim_reason_body_length_limit": (
        "la signature ne couvre que le début du message (l=) : la Caisse signe toujours "
        "le message entier",
        "the signature covers only the start of the message (l=): the fund always signs "
        "the whole message",
    ),
    "dkim_reason_malformed": ("signature mal formée", "malformed signature"),
    "dkim_reason_expired": ("signature expirée", "expired signature"),
    "dkim_reason_algorithm_mismatch": (
        "l'algorithme ne correspond pas à la clé",
        "the algorithm does not match the key",
    ),
    "dkim_reason_headers_too_large": (
        "les en-têtes du message sont trop volumineux pour être vérifiés",
        "the message headers are too large to be checked",
    ),
    "dkim_reason_too_many_signatures": (
        "trop de signatures : celle-ci n'a pas été vérifiée",
        "too many signatures: this one was not checked",
    ),
    "dkim_reason_weak_algorithm": (
        "algorithme obsolète (SHA-1), refusé",
        "obsolete algorithm (SHA-1), refused",
    ),
    "dkim_reason_unparseable_message": (
        "le message est illisible pour la vérification",
        "the message cannot be read for checking",
    ),
    # --- documents ---
    "doc_valid": ("Signature valide", "Valid signature"),
    "doc_invalid": ("Signature invalide", "Invalid signature"),
    "doc_revoked": ("Signé par une clé révoquée", "Signed by a revoked key"),
    "doc_unsigned": ("Sans signature", "Not signed"),
    "doc_reason_document_missing": (
        "le document signé manque à côté de sa signature",
        "the signed document is missing next to its signature",
    ),
    "doc_reason_digest_mismatch": (
        "le document a été modifié après la signature",
        "the document was changed after it was signed",
    ),
    "doc_reason_bad_signature": (
        "la signature ne correspond pas au certificat",
        "the signature does not match the certificate",
    ),
    "doc_reason_not_fund_root": (
        "le certificat n'a pas été émis par la Caisse",
        "the certificate was not issued by the fund",
    ),
    "doc_reason_certificate_not_in_archive": (
        "la Caisse n'a jamais publié ce certificat",
        "the fund never published this certificate",
    ),
    "doc_reason_signer_unknown": (
        "le certificat du signataire est absent",
        "the signer's certificate is missing",
    ),
    "doc_reason_no_signing_time": (
        "la date de signature manque",
        "the signing time is missing",
    ),
    "doc_reason_signed_outside_validity": (
        "signé hors de la période de validité du certificat",
        "signed outside the certificate's validity period",
    ),
    "doc_reason_signed_in_future": (
        "la date de signature est dans le futur",
        "the signing time is in the future",
    ),
    "doc_reason_signed_after_compromise": (
        "signé après la compromission de la clé",
        "signed after the key was compromised",
    ),
    "doc_reason_revoked_key": (
        "la clé a été révoquée ; la date de signature déclarée ne peut pas être prouvée",
        "the key was revoked; the signing time it states cannot be proven",
    ),
    "doc_reason_not_detached": (
        "la signature n'est pas détachée",
        "the signature is not detached",
    ),
    "doc_reason_not_signed_data": (
        "le fichier .p7s n'est pas une signature CMS",
        "the .p7s file is not a CMS signature",
    ),
    "doc_reason_no_signed_attributes": (
        "la signature n'a pas d'attributs signés",
        "the signature has no signed attributes",
    ),
    "doc_reason_unsupported_algorithm": ("algorithme non pris en charge", "unsupported algorithm"),
    "doc_reason_malformed_signature": (
        "le fichier .p7s est mal formé",
        "the .p7s file is malformed",
    ),
    "doc_reason_signed_after_retirement": (
        "signé après le retrait du certificat : la Caisse ne signait plus avec lui",
        "signed after the certificate was retired: the fund no longer signed with it",
    ),
    "doc_reason_signed_before_activation": (
        "signé avant la mise en service du certificat",
        "signed before the certificate was put into service",
    ),
    "doc_reason_wrong_key_usage": (
        "le certificat signataire n'est pas fait pour signer des documents",
        "the signing certificate is not made for signing documents",
    ),
    "doc_reason_logged_before_compromise": (
        "certificat révoqué depuis, mais le journal prouve que la signature existait avant la "
        "compromission",
        "certificate revoked since, but the log proves the signature existed before the compromise",
    ),
    "doc_reason_no_signature": (
        "la Caisse n'a pas scellé ce fichier (aucun .p7s ne l'accompagne)",
        "the fund did not seal this file (no .p7s comes with it)",
    ),
    # --- key states ---
    "state_pending": ("en attente", "pending"),
    "state_active": ("active", "active"),
    "state_retired": ("retirée (plus utilisée pour signer)", "retired (no longer signing)"),
    "state_withdrawn": (
        "retirée du DNS (les anciennes signatures restent valides)",
        "withdrawn from DNS (old signatures stay valid)",
    ),
    "state_revoked": ("révoquée", "revoked"),
    # --- warnings ---
    "warning_revoked_key": (
        "Une clé utilisée a été révoquée par la Caisse : ne vous fiez pas à cette signature.",
        "A key used here was revoked by the fund: do not rely on this signature.",
    ),
    "warning_some_dkim_failed": (
        "Une des signatures du message est valide, une autre ne l'est pas.",
        "One of the message's signatures is valid, another is not.",
    ),
    "warning_unknown_selector": (
        "Une signature cite une clé de la Caisse que l'archive publique ne connaît pas.",
        "A signature names a fund key the public archive does not know.",
    ),
    "warning_unsigned_document": (
        "Un PDF n'a pas de signature .p7s.",
        "A PDF has no .p7s signature.",
    ),
    "warning_lf_line_ends": (
        "Le fichier a des fins de ligne Unix (LF) : il a été enregistré après réception. "
        "Les documents se vérifient quand même.",
        "The file has Unix (LF) line ends: it was saved after it was received. The "
        "documents verify all the same.",
    ),
    "warning_forwarded": (
        "Le message de la Caisse a été trouvé à l'intérieur d'un transfert ; c'est lui qui "
        "est vérifié ici.",
        "The fund's message was found inside a forward; that message is what was checked.",
    ),
    "warning_forward_attachments": (
        "Le transfert contient aussi ses propres pièces jointes, hors du message de la "
        "Caisse : elles sont listées ci-dessous et ne viennent pas de la Caisse.",
        "The forward also carries attachments of its own, outside the fund's message: they "
        "are listed below and do not come from the fund.",
    ),
    "warning_sealed_before_log": (
        "Ce décompte a été scellé avant la mise en service du journal des décomptes : il est "
        "vérifié selon les règles d'alors, sans preuve extérieure de sa date.",
        "This statement was sealed before the statement log existed: it is checked by the "
        "rules of that time, without outside proof of its date.",
    ),
    "warning_log_time_not_certified": (
        "Le décompte figure au journal, mais aucun horodatage (RFC 3161) ne certifie encore "
        "l'heure de son inscription.",
        "The statement is in the log, but no RFC 3161 timestamp certifies the time it was "
        "logged yet.",
    ),
    "warning_logged_before_compromise": (
        "Une clé utilisée a été révoquée depuis ; le journal prouve que ce décompte a été "
        "scellé avant la compromission : il reste authentique.",
        "A key used here was revoked since; the log proves this statement was sealed before "
        "the compromise: it stays authentic.",
    ),
    "warning_header_defects": (
        "L'en-tête du message contient ce que la Caisse n'émet jamais ; l'expéditeur et "
        "l'objet affichés par votre messagerie ne sont pas garantis.",
        "The message header holds what the fund never emits; the sender and subject your "
        "mail program shows are not vouched for.",
    ),
    "warning_unsealed_attachment": (
        "Une pièce jointe n'est pas scellée par la Caisse (voir la liste des pièces jointes).",
        "An attachment is not sealed by the fund (see the list of attachments).",
    ),
    # --- what is wrong in a header block (defect codes from verifier/headers.py) ---
    "defect_bare_cr": (
        "un caractère CR isolé (retour chariot sans saut de ligne)",
        "a bare CR character (carriage return without line feed)",
    ),
    "defect_bare_lf": (
        "un saut de ligne LF isolé au milieu de lignes CRLF",
        "a bare LF line feed among CRLF lines",
    ),
    "defect_nul": ("un caractère NUL", "a NUL character"),
    "defect_control": ("un caractère de contrôle", "a control character"),
    "defect_long_line": (
        "une ligne de plus de 998 caractères",
        "a line longer than 998 characters",
    ),
    "defect_not_a_field": (
        "une ligne d'en-tête qui n'est pas un champ « nom: valeur »",
        'a header line that is not a "name: value" field',
    ),
    "defect_space_before_colon": (
        "un nom de champ suivi d'espaces avant les deux-points",
        "a field name followed by spaces before its colon",
    ),
    "defect_blank_continuation": (
        "une ligne de continuation vide",
        "an empty continuation line",
    ),
    "defect_leading_continuation": (
        "une ligne de continuation en tête de l'en-tête",
        "a continuation line at the top of the header",
    ),
    "defect_misplaced_envelope": (
        "une ligne « From » d'enveloppe au milieu de l'en-tête",
        'an envelope "From " line inside the header',
    ),
    "defect_ambiguous_mime": (
        "une partie MIME qui se lit de deux façons (Content-Type, Content-Transfer-Encoding, "
        "Content-Disposition ou boundary écrit deux fois, différemment)",
        "a MIME part that reads two ways (Content-Type, Content-Transfer-Encoding, "
        "Content-Disposition or boundary written twice, differently)",
    ),
    "defect_repeated_from": ("plusieurs champs From", "more than one From field"),
    "defect_repeated_sender": ("plusieurs champs Sender", "more than one Sender field"),
    "defect_repeated_reply-to": ("plusieurs champs Reply-To", "more than one Reply-To field"),
    "defect_repeated_to": ("plusieurs champs To", "more than one To field"),
    "defect_repeated_cc": ("plusieurs champs Cc", "more than one Cc field"),
    "defect_repeated_subject": ("plusieurs champs Subject", "more than one Subject field"),
    "defect_repeated_date": ("plusieurs champs Date", "more than one Date field"),
    "defect_repeated_message-id": (
        "plusieurs champs Message-ID",
        "more than one Message-ID field",
    ),
    # --- pages ---
    "title": ("Vérifier un décompte", "Check a statement"),
    "intro": (
        "Déposez l'e-mail de décompte reçu de la Caisse (fichier .eml) : nous vérifions "
        "qu'il vient bien de la Caisse et n'a pas été modifié. Le fichier est vérifié en "
        "mémoire, jamais enregistré.",
        "Upload the statement email you received from the fund (.eml file): we check that "
        "it really comes from the fund and was not changed. The file is checked in memory, "
        "never stored.",
    ),
    "upload_label": ("E-mail reçu (.eml)", "Received email (.eml)"),
    "drop_hint": ("ou déposez le fichier ici", "or drop the file here"),
    "submit": ("Vérifier", "Check"),
    "pair_title": (
        "Vous n'avez que le document et sa signature ?",
        "Only have the document and its signature?",
    ),
    "pair_document": ("Document (PDF)", "Document (PDF)"),
    "pair_signature": ("Signature (.p7s)", "Signature (.p7s)"),
    "openssl_link": (
        "Vérifier un document avec openssl, sans ce service",
        "Check a document with openssl, without this service",
    ),
    "switch_language": ("English", "Français"),
    "result_title": ("Résultat de la vérification", "Verification result"),
    "forwarded_note": ("Trouvé dans un transfert", "Found inside a forward"),
    "checks": ("Détail des vérifications", "Checks in detail"),
    "message_section": ("Le message", "The message"),
    "sender": ("Expéditeur", "Sender"),
    "sender_domain": ("Domaine de l'expéditeur", "Sender domain"),
    "subject": ("Objet", "Subject"),
    "date": ("Date", "Date"),
    "message_id": ("Identifiant", "Message ID"),
    "to": ("Destinataires", "To"),
    "cc": ("Copie", "Cc"),
    "reply_to": ("Répondre à", "Reply to"),
    "headers_vouched": (
        "Ces champs sont exactement ceux que la signature de la Caisse couvre.",
        "These fields are exactly those the fund's signature covers.",
    ),
    "headers_not_vouched": (
        "Aucune signature valide de la Caisse ne couvre ces champs : ils peuvent avoir été "
        "modifiés, ne vous y fiez pas.",
        "No valid signature of the fund covers these fields: they may have been changed; "
        "do not rely on them.",
    ),
    "header_defects": ("Anomalies de l'en-tête", "Header anomalies"),
    "dkim_section": ("Signatures du message (DKIM)", "Message signatures (DKIM)"),
    "no_dkim": ("Aucune signature DKIM.", "No DKIM signature."),
    "documents_section": ("Pièces jointes", "Attachments"),
    "no_documents": ("Aucune pièce jointe.", "No attachment."),
    "kind_document": ("document (PDF)", "document (PDF)"),
    "kind_file": ("fichier", "file"),
    "kind_message": ("e-mail joint", "attached email"),
    "kind": ("Nature", "Kind"),
    "content_type": ("Type déclaré", "Declared type"),
    "unnamed": ("(sans nom)", "(no name)"),
    "outside_note": (
        "joint au transfert, hors du message de la Caisse",
        "attached to the forward, outside the fund's message",
    ),
    "domain": ("Domaine", "Domain"),
    "selector": ("Sélecteur", "Selector"),
    "algorithm": ("Algorithme", "Algorithm"),
    "result": ("Résultat", "Result"),
    "why": ("Pourquoi", "Why"),
    "key_state": ("État de la clé", "Key state"),
    "key_generation": ("Génération de clés", "Key generation"),
    "compromised_at": ("Compromise depuis", "Compromised since"),
    "file_name": ("Nom du fichier", "File name"),
    "size": ("Taille", "Size"),
    "bytes": ("{n} octets", "{n} bytes"),
    "sha256": ("SHA-256", "SHA-256"),
    "signer": ("Certificat signataire", "Signer certificate"),
    "serial": ("Numéro de série", "Serial number"),
    "certificate_sha256": ("Empreinte SHA-256 du certificat", "Certificate SHA-256"),
    "validity": ("Validité", "Validity"),
    "signing_time": ("Date de signature", "Signing time"),
    "technical": ("Détail technique", "Technical detail"),
    "warnings": ("Avertissements", "Warnings"),
    "log_section": ("Journal des décomptes", "Statement log"),
    "log_logged": (
        "Scellé et inscrit au journal {origin}, entrée n° {index}.",
        "Sealed and logged in {origin}, entry {index}.",
    ),
    "log_time": (
        "Heure d'inscription certifiée par {tsa} : {when}.",
        "Time of logging certified by {tsa}: {when}.",
    ),
    "log_not_logged": (
        "Absent du journal, alors que le journal existait quand ce sceau a été fait.",
        "Not in the log, although the log existed when this seal was made.",
    ),
    "log_before_log": (
        "Scellé avant la mise en service du journal.",
        "Sealed before the statement log existed.",
    ),
    "log_tree_size": ("Taille de l'arbre", "Tree size"),
    "log_leaf_hash": ("Empreinte de la feuille (RFC 9162)", "Leaf hash (RFC 9162)"),
    "log_entry": ("Entrée", "Entry"),
    "log_checkpoint": ("Point de contrôle signé", "Signed checkpoint"),
    "log_proof": ("Preuve d'inclusion", "Inclusion proof"),
    "log_witnessed": ("Co-signé par les témoins", "Cosigned by the witnesses"),
    "log_cosigners": (
        "Autres signatures (témoins ; non vérifiées ici)",
        "Other signatures (witnesses; not verified here)",
    ),
    "check_another": ("Vérifier un autre e-mail", "Check another email"),
    "check_another_document": ("Vérifier un autre document", "Check another document"),
    "again_notice": (
        "Le résultat d'une vérification n'est pas conservé, car le fichier n'a jamais été "
        "enregistré : déposez-le à nouveau pour voir le résultat.",
        "A verification result is not kept, because the file was never stored: upload it "
        "again to see the result.",
    ),
    # --- the result, for a claims officer first ---
    "summary_statement": ("Le décompte", "The statement"),
    "summary_document": ("Le document", "The document"),
    "sealed_on": ("Scellé par la Caisse le {when}", "Sealed by the fund on {when}"),
    "signature_dated": (
        "Date indiquée par la signature : {when}",
        "Time the signature states: {when}",
    ),
    "logged_on": (
        "Inscrit au journal des décomptes le {when} (heure certifiée par {tsa}).",
        "Entered in the statement log on {when} (time certified by {tsa}).",
    ),
    "key_plain_pending": ("Clé pas encore en service.", "Key not yet in service."),
    "key_plain_active": ("Clé de la Caisse en service.", "A fund key in service."),
    "key_plain_retired": (
        "Clé retirée le {day} : les signatures faites avant cette date restent valides.",
        "Key retired on {day}: signatures made before that date stay valid.",
    ),
    "key_plain_withdrawn": (
        "Clé retirée le {day}, plus publiée dans le DNS : les signatures faites avant cette "
        "date restent valides.",
        "Key retired on {day}, no longer published in DNS: signatures made before that date "
        "stay valid.",
    ),
    "key_plain_revoked": (
        "Clé révoquée le {day} (compromise depuis le {compromised}).",
        "Key revoked on {day} (compromised since {compromised}).",
    ),
    "technical_title": ("Détails techniques", "Technical details"),
    "technical_show": (
        "Afficher les sélecteurs, algorithmes, certificats, empreintes et la preuve du journal",
        "Show the selectors, algorithms, certificates, hashes and the log proof",
    ),
    "date_header": ("Champ Date, tel qu'écrit", "Date field, as written"),
    "openssl_title": ("Vérifier un document avec openssl", "Check a document with openssl"),
    "openssl_intro": (
        "Chaque document de décompte est accompagné d'un fichier de signature : "
        "decompte-123.pdf arrive avec decompte-123.pdf.p7s. Vous pouvez vérifier cette "
        "signature vous-même, sans ce service, avec l'outil libre openssl.",
        "Each statement document comes with a signature file: decompte-123.pdf arrives "
        "with decompte-123.pdf.p7s. You can check that signature yourself, without this "
        "service, with the free openssl tool.",
    ),
    "openssl_step_root": (
        "1. Téléchargez le certificat racine de la Caisse et vérifiez son empreinte :",
        "1. Download the fund's root certificate and check its fingerprint:",
    ),
    "openssl_download": ("Télécharger root.pem", "Download root.pem"),
    "openssl_fingerprint": ("Empreinte SHA-256", "SHA-256 fingerprint"),
    "openssl_step_save": (
        "2. Enregistrez le document et son fichier .p7s depuis l'e-mail.",
        "2. Save the document and its .p7s file from the email.",
    ),
    "openssl_step_verify": ("3. Lancez :", "3. Run:"),
    "openssl_success": (
        "openssl affiche « CMS Verification successful » si le document est intact et signé "
        "par la Caisse ; sinon il affiche « CMS Verification failure », suivi de la raison.",
        'openssl prints "CMS Verification successful" when the document is intact and signed '
        'by the fund; otherwise it prints "CMS Verification failure", followed by the reason.',
    ),
    "openssl_flags": (
        "Gardez toutes les options : avec -CAfile root.pem -no-CApath -no-CAstore, openssl "
        "ne fait confiance qu'à la racine de la Caisse, et à aucune autre autorité installée "
        "sur votre ordinateur ; avec -purpose smimesign, il exige un certificat fait pour "
        "signer des documents, et non par exemple un certificat de serveur web.",
        "Keep every option: with -CAfile root.pem -no-CApath -no-CAstore, openssl trusts "
        "the fund's root only, and no other authority installed on your computer; with "
        "-purpose smimesign, it requires a certificate made for signing documents, not for "
        "example a web server certificate.",
    ),
    "openssl_attime": (
        "Un certificat de signature est valable environ treize mois. Pour un document plus "
        "ancien, ajoutez -attime suivi de la date de signature en secondes depuis 1970 "
        "(par exemple -attime 1772341200), afin que openssl vérifie à cette date.",
        "A signing certificate is valid for about thirteen months. For an older document, "
        "add -attime followed by the signing time in seconds since 1970 (for example "
        "-attime 1772341200), so that openssl checks at that date.",
    ),
    "openssl_log_title": ("Ce qu'openssl ne vérifie pas", "What openssl does not check"),
    "openssl_log_rules": (
        "openssl vérifie qu'un document correspond à sa signature et que celle-ci vient de la "
        "Caisse. Ce service vérifie en plus le journal des décomptes, tenu par la Caisse et "
        "horodaté par une autorité extérieure : un sceau fait avec une clé révoquée depuis "
        "reste authentique s'il figure au journal avant la compromission ; un sceau fait "
        "après la mise en service du journal et absent de celui-ci n'est jamais authentique, "
        "quelle que soit sa clé ; les décomptes scellés avant le journal gardent les règles "
        "d'alors. Le journal est public (/log/) et se vérifie avec tout outil RFC 9162.",
        "openssl checks that a document matches its signature and that the signature comes "
        "from the fund. This service also checks the statement log, kept by the fund and "
        "timestamped by an outside authority: a seal made with a key revoked since stays "
        "authentic if the log holds it from before the compromise; a seal made after the log "
        "was put into service and absent from it is never authentic, whatever its key; "
        "statements sealed before the log keep the rules of that time. The log is public "
        "(/log/) and can be checked with any RFC 9162 tool.",
    ),
    "openssl_fingerprint_cmd": (
        "Pour calculer l'empreinte du certificat téléchargé :",
        "To compute the fingerprint of the downloaded certificate:",
    ),
    "no_archive": (
        "Le service de vérification n'a pas encore d'archive de clés publiques.",
        "The verification service has no public key archive yet.",
    ),
    # --- errors ---
    "error_title": ("Impossible de vérifier", "Cannot check"),
    "error_too_large": (
        "Le fichier dépasse la taille maximale ({limit}). Un e-mail de décompte fait "
        "environ 30 Ko.",
        "The file is larger than the limit ({limit}). A statement email is about 30 KB.",
    ),
    "error_rate_limited": (
        "Trop de vérifications depuis votre adresse. Réessayez dans {seconds} secondes.",
        "Too many checks from your address. Try again in {seconds} seconds.",
    ),
    "error_org_rate_limited": (
        "Le quota de votre organisation ({limit} vérifications par minute) est atteint. "
        "Réessayez dans {seconds} secondes.",
        "Your organisation's quota ({limit} checks a minute) is used up. Try again in "
        "{seconds} seconds.",
    ),
    "error_batch_over_quota": (
        "Un lot de {count} e-mails dépasse le quota de {limit} vérifications par minute : "
        "envoyez des lots plus petits.",
        "A batch of {count} emails is more than the quota of {limit} checks a minute: send "
        "smaller batches.",
    ),
    "error_too_many_emails": (
        "Un lot compte au plus {limit} e-mails.",
        "A batch holds at most {limit} emails.",
    ),
    "error_batch_field": (
        "Champ inattendu « {name} » : chaque e-mail d'un lot va dans un champ « file ».",
        'Unexpected field "{name}": each email of a batch goes in a "file" field.',
    ),
    "error_token_malformed": (
        "En-tête Authorization mal formé : attendu « Bearer » suivi du jeton.",
        'Malformed Authorization header: expected "Bearer" followed by the token.',
    ),
    "error_token_elsewhere": (
        "Un jeton ne s'envoie que dans un seul en-tête « Authorization: Bearer », jamais dans "
        "l'adresse (elle finit dans les journaux).",
        'A token goes in one "Authorization: Bearer" header only, never in the URL (URLs end '
        "up in logs).",
    ),
    "error_token_refused": (
        "Jeton refusé : inconnu, révoqué, ou organisation sortie de la convention. "
        "Demandez un nouveau jeton à la Caisse.",
        "Token refused: unknown, revoked, or the organisation has left the convention. "
        "Ask the fund for a new token.",
    ),
    "error_body_timeout": (
        "Le fichier est arrivé trop lentement (moins de {rate} octets par seconde) : "
        "l'envoi a été interrompu. Vérifiez votre connexion et réessayez.",
        "The file arrived too slowly (under {rate} bytes per second): the upload was "
        "stopped. Check your connection and try again.",
    ),
    "error_busy": (
        "Le service reçoit trop de fichiers en ce moment. Réessayez dans {seconds} secondes.",
        "The service is receiving too many files right now. Try again in {seconds} seconds.",
    ),
    "error_no_file": ("Choisissez un fichier à vérifier.", "Choose a file to check."),
    "error_bad_request": (
        "La demande est mal formée : {detail}",
        "The request is malformed: {detail}",
    ),
    "error_log_unavailable": (
        "Le journal des décomptes ne peut pas être consulté pour ce décompte pour l'instant "
        "(il vient peut-être d'être envoyé). Réessayez dans une minute.",
        "The statement log cannot be checked for this statement right now (it may have just "
        "been sent). Try again in a minute.",
    ),
    "error_unavailable": (
        "Le service de vérification est momentanément indisponible.",
        "The verification service is temporarily unavailable.",
    ),
    "error_not_found": ("Page introuvable.", "Page not found."),
}

Translate = Callable[..., str]


def pick(query_lang: str | None, accept_language: str | None) -> str:
    """?lang= wins; then the first supported Accept-Language entry by quality; then French."""
    if query_lang in LANGUAGES:
        return query_lang
    best: tuple[float, str] | None = None
    for item in (accept_language or "").split(",")[:20]:
        tag, _, params = item.strip().partition(";")
        primary = tag.strip().lower().split("-", 1)[0]
        if primary not in LANGUAGES:
            continue
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                continue
        if best is None or quality > best[0]:
            best = (quality, primary)
    return best[1] if best and best[0] > 0 else DEFAULT


# French sets ':' and guillemets off with a no-break space, and ';', '?', '!' with a narrow
# one: the mark never starts a line of its own on a narrow screen.
_FRENCH_SPACES = (
    (" :", "\u00a0:"),
    (" ;", "\u202f;"),
    (" ?", "\u202f?"),
    (" !", "\u202f!"),
    ("« ", "«\u00a0"),
    (" »", "\u00a0»"),
)


def french_spaces(text: str) -> str:
    for plain, bound in _FRENCH_SPACES:
        text = text.replace(plain, bound)
    return text


def translator(lang: str, messages: Mapping[str, tuple[str, str]] = MESSAGES) -> Translate:
    index = LANGUAGES.index(lang) if lang in LANGUAGES else 0

    def translate(key: str, **params: object) -> str:
        entry = messages.get(key)
        if entry is None:
            return key  # a stable code is better than a crash; tests keep this unreachable
        # Spaces are bound in the message, never in the values put into it.
        text = entry[index] if index else french_spaces(entry[index])
        return text.format(**params) if params else text

    return translate


# Dates as each language writes them in prose, always in UTC (the page says so): an insurer
# compares them with other systems, and a server's local zone would only add doubt.
MONTHS = {
    "fr": (
        "janvier", "février", "mars", "avril", "mai", "juin",
        "juillet", "août", "septembre", "octobre", "novembre", "décembre",
    ),
    "en": (
        "January", "February", "March", "April", "May", "June",
        "July", "August", "September", "October", "November", "December",
    ),
}  # fmt: skip


def day(value: dt.datetime, lang: str) -> str:
    """'1er décembre 2026', '30 November 2026'."""
    utc = value.astimezone(dt.UTC)
    months = MONTHS["en" if lang == "en" else "fr"]
    number = "1er" if utc.day == 1 and lang != "en" else str(utc.day)
    return f"{number} {months[utc.month - 1]} {utc.year}"


def when(value: dt.datetime, lang: str, seconds: bool = False) -> str:
    """'30 novembre 2026 à 09:14 UTC', '30 November 2026 at 09:14 UTC'."""
    utc = value.astimezone(dt.UTC)
    clock = utc.strftime("%H:%M:%S" if seconds else "%H:%M")
    joiner = "at" if lang == "en" else "à"
    return f"{day(utc, lang)} {joiner} {clock} UTC"


def number(value: int, lang: str) -> str:
    """'19 243' (a narrow no-break space, as French writes it), '19,243'."""
    grouped = f"{value:,}"
    return grouped if lang == "en" else grouped.replace(",", "\u202f")
