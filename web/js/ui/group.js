// Group dialogs: "New group" (name + members) and "Group info" (rename,
// announcement mode, members with make admin / remove, invite link).
import { $, h, paintAvatar, shrink } from './dom.js';
import { domainOf } from '../xmpp/xml.js';

const RANK = { owner: 3, admin: 2, member: 1, none: 0 };

/** Addresses typed by the user: bare names get this server's domain. */
function addresses(text, domain) {
  return text.split(/[\s,;]+/).map((s) => s.trim().toLowerCase()).filter(Boolean)
    .map((s) => (s.includes('@') ? s : `${s}@${domain}`));
}
const valid = (jid) => /^[^@\s/]+@[^@\s/]+$/.test(jid);

export function mountGroupDialogs(app, { openChat, getJid }) {
  const ng = $('new-group-dialog');
  $('new-group').addEventListener('click', () => {
    $('new-group-error').textContent = '';
    $('new-group-name').value = '';
    $('new-group-members').value = '';
    ng.showModal();
  });
  $('new-group-cancel').addEventListener('click', () => ng.close());
  $('new-group-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const name = $('new-group-name').value.trim();
    const members = addresses($('new-group-members').value, domainOf(app.me));
    const error = $('new-group-error');
    if (!name) { error.textContent = 'Give the group a name.'; return; }
    const bad = members.find((m) => !valid(m));
    if (bad) { error.textContent = `"${bad}" is not an address.`; return; }
    $('new-group-create').disabled = true;
    try {
      const c = await app.createGroup(name, members);
      ng.close();
      openChat(c.jid);
    } catch (err) {
      error.textContent = `Could not create the group: ${err.text || err.condition || err.message}`;
    } finally {
      $('new-group-create').disabled = false;
    }
  });

  const gd = $('group-dialog');
  const error = $('group-error');
  let room = null;
  let link = null;
  const fail = (err) => { error.textContent = err.text || err.condition || err.message; };

  async function render() {
    const c = app.chat(room);
    const mine = c.group?.affiliation || 'none';
    const admin = RANK[mine] >= RANK.admin;
    $('group-name').value = app.displayName(room);
    paintAvatar($('group-avatar'), app.displayName(room), c.avatar);
    $('group-avatar-label').hidden = !admin;
    $('group-name').readOnly = !admin;
    $('group-rename').hidden = !admin;
    $('group-announce').checked = !!c.group?.announcement;
    $('group-announce').disabled = mine !== 'owner';
    $('group-add-jid').closest('.row-inline').hidden = !admin;
    $('group-add-jid').labels[0].hidden = !admin;
    for (const id of ['group-link-create', 'group-link-revoke']) $(id).hidden = !admin;
    const members = await app.groupMembers(room);
    $('group-members').replaceChildren(...members.sort((a, b) => RANK[b.affiliation] - RANK[a.affiliation])
      .map((m) => {
        const you = m.jid === app.me;
        const name = you ? 'You' : app.displayName(m.jid);
        const role = m.affiliation === 'member' ? '' : m.affiliation === 'owner' ? 'Group owner' : 'Group admin';
        const canManage = admin && !you && RANK[mine] > RANK[m.affiliation];
        return h('li', { dataset: { jid: m.jid } },
          h('span', { class: 'grow' }, h('span', { text: name }), role ? h('span', { class: 'muted', text: ` · ${role}` }) : null),
          canManage && m.affiliation === 'member' ? h('button', { type: 'button', 'aria-label': `Make ${name} admin`,
            onclick: () => change(m.jid, 'admin') }, 'Make admin') : null,
          canManage && m.affiliation === 'admin' ? h('button', { type: 'button', 'aria-label': `Dismiss ${name} as admin`,
            onclick: () => change(m.jid, 'member') }, 'Dismiss as admin') : null,
          canManage ? h('button', { type: 'button', class: 'danger', 'aria-label': `Remove ${name}`,
            onclick: () => change(m.jid, 'none') }, 'Remove') : null);
      }));
    if (admin) {
      try {
        link = (await app.inviteLinks(room)).filter((l) => !l.revoked).pop() || null;
      } catch { link = null; }
    }
    $('group-link').value = link?.url || '';
    $('group-link-copy').disabled = !link;
    $('group-link-revoke').disabled = !link;
  }

  async function change(jid, affiliation) {
    error.textContent = '';
    try { await app.setAffiliation(room, jid, affiliation); } catch (err) { fail(err); }
    await render().catch(fail);
  }

  $('group-info').addEventListener('click', () => {
    room = getJid();
    if (!room) return;
    error.textContent = '';
    link = null;
    $('group-link').value = '';
    gd.showModal();
    render().catch(fail);
  });
  $('group-close').addEventListener('click', () => gd.close());
  $('group-avatar-file').addEventListener('change', async (e) => {
    const file = e.target.files?.[0];
    e.target.value = '';
    if (!file || !room) return;
    error.textContent = '';
    let photo;
    try { photo = await shrink(file, 192); } catch { error.textContent = 'That file is not an image this browser can read.'; return; }
    try {
      await app.setGroupAvatar(room, photo);
      paintAvatar($('group-avatar'), app.displayName(room), photo);
    } catch (err) { fail(err); }
  });
  $('group-rename').addEventListener('click', async () => {
    const name = $('group-name').value.trim();
    if (!name) { error.textContent = 'Give the group a name.'; return; }
    try { await app.renameGroup(room, name); error.textContent = ''; } catch (err) { fail(err); }
  });
  $('group-announce').addEventListener('change', async (e) => {
    try { await app.setAnnouncement(room, e.target.checked); error.textContent = ''; } catch (err) { e.target.checked = !e.target.checked; fail(err); }
  });
  $('group-add').addEventListener('click', async () => {
    const jid = addresses($('group-add-jid').value, domainOf(app.me))[0];
    if (!jid || !valid(jid)) { error.textContent = 'Enter an address like carol@example.org'; return; }
    await change(jid, 'member');
    if (!error.textContent) $('group-add-jid').value = '';
  });
  $('group-link-create').addEventListener('click', async () => {
    try { link = await app.createInviteLink(room); error.textContent = ''; } catch (err) { fail(err); }
    $('group-link').value = link?.url || '';
    $('group-link-copy').disabled = !link;
    $('group-link-revoke').disabled = !link;
  });
  $('group-link-copy').addEventListener('click', async () => {
    if (!link) return;
    try { await navigator.clipboard.writeText(link.url); $('group-link-copy').textContent = 'Copied'; } catch {
      $('group-link').select(); // no clipboard permission: selected for Ctrl+C
    }
    setTimeout(() => { $('group-link-copy').textContent = 'Copy link'; }, 2000);
  });
  $('group-link-revoke').addEventListener('click', async () => {
    if (!link) return;
    try { await app.revokeInviteLink(room, link.token); link = null; error.textContent = ''; } catch (err) { fail(err); }
    $('group-link').value = link?.url || '';
    $('group-link-copy').disabled = !link;
    $('group-link-revoke').disabled = !link;
  });
}
