"""The request bank for the synthetic support-email corpus: what customers ask for, per queue.

Plain text so that a person can read and extend it; `training.synth.templates.intents()` parses it.
Format of `INTENTS` (one block per intent, each starting at its header line):

    [queue.intent w=<base weight> dw=<weight added at drift 1> mix=<secondary queue>]
    S: subject | another subject          (subject lines; may repeat)
    a full request: one to three sentences with {slot} placeholders
    ~ a terse request, as typed on a phone | another one
    + a detail sentence that may follow the request | another one

An intent with `w=0` exists only in drifted mail. `mix=` marks requests that touch a second queue (a technical
error on the billing page): the label is the intent's queue and `secondary_queue` the mixed one.
`alt=<queue>:<share>` marks borderline requests that agents file under another queue that often (a login
failure under account rather than technical): the label follows the agents, so it is not a flip.
Words listed in `DRIFT_TERMS` appear only through drift-weighted intents and slot values, never in base text.
"""

INTENTS = """
[billing.double_charge w=6]
S: Charged twice | Double charge on my card | Duplicate payment | charged 2x?? | Two payments for one order
I was charged twice for my {plan} subscription this month, two payments of {amount} on {date}.
My bank statement shows two identical charges of {amount} from you on {date}. I only ordered once ({order}).
My {card} shows the same charge twice for order {order}. Can you refund the duplicate?
You took {amount} from my account twice this month. Please check and give one back.
~ charged twice for {order}, pls fix | double charge again?? {amount} x2
+ The second charge came through a day later.
+ My bank says the payment is not pending, it went through twice.
[billing.invoice_copy w=5]
S: Invoice request | Need a copy of invoice {invoice} | Invoice for {month} | VAT invoice please | invoice
Could you send me a copy of invoice {invoice}? Our accounting department needs it for the {month} close.
I can't find the invoice for my last payment of {amount} in my account. Could you email it to me?
Please send a proper invoice with our company name and address for order {order}.
We need all invoices from {month} as PDF for our auditor.
~ need invoice for {order} | invoice {month} pls
+ The invoice must show our company name, {company}.
+ The download button on the billing page only gives me a receipt, not an invoice.
[billing.refund_charge w=5 alt=cancellation:0.07]
S: Refund request | Refund for {order} | Please refund | money back for wrong charge | Refund?
I was charged {amount} on {date} for a renewal I did not want. Please refund this charge.
Can I get a refund for the {amount} charge on {date}? I downgraded before the renewal date.
You charged my {card} {amount} after the trial ended, but nobody told me it was ending. I'd like a refund.
Please refund the {amount} you charged for the {product}, I returned it two weeks ago.
~ refund pls | refund the {amount} charge from {date}
+ When can I expect the money back on my card? | It has been 10 days and I still don't see the refund.
[billing.payment_method w=4]
S: Update payment method | New credit card | Change card on file | payment details | Card expired
My card expires next month. How do I update the payment method on my account?
I'd like to switch from {card} to PayPal for future payments.
Our company card changed. Please charge the new one for the {plan} plan from now on.
Can I pay by bank transfer instead of card? Our finance team prefers that.
~ how do i change my card | card expired, where do I update it
+ The billing page keeps showing the old card.
[billing.vat w=2]
S: VAT question | VAT number missing on invoice | Reverse charge | tax on invoice
We are an EU business and our VAT number {vat} is not on the invoice. Can you reissue it with reverse charge?
Why was VAT added to my invoice {invoice}? We entered our VAT ID {vat} at checkout.
Could you explain the tax line on my last invoice? It went from {amount} to more than that.
~ VAT ID {vat} missing on invoice
+ Our accountant will not accept the invoice without it.
[billing.price_increase w=3 alt=cancellation:0.07]
S: Price increase | Why did my price go up? | New pricing | subscription price changed
My {plan} subscription went up to {amount} without any notice. Why did the price change?
I received an email about new pricing. Does the price increase apply to my annual plan as well?
The last charge was higher than usual ({amount}). Was there a price increase?
~ why is my bill higher this month
+ Nothing about my plan changed on my side.
[billing.failed_payment w=3 alt=technical:0.09]
S: Payment failed | Payment declined | Can't pay | payment error
Your system says my payment failed but the money left my account. Please check order {order}.
I keep getting "payment declined" when I try to renew my {plan} plan, but my {card} works everywhere else.
I got a notice that my payment failed and my account will be suspended. What do I need to do?
~ payment keeps failing
+ I tried two different cards.
[billing.tradein_credit w=0 dw=4]
S: Trade-in credit missing | Nimbus trade-in | Where is my trade-in credit? | old hub returned
I sent my old Home Hub back for the Nimbus trade-in on {date}, but the {amount} credit is not on my invoice.
The trade-in for my Nimbus Hub was confirmed, yet I paid the full price. When do I get the credit?
I returned the old device in the box you sent (order {order}) and it was delivered. Where is my credit?
~ nimbus trade-in credit missing | sent old hub back, no credit yet
+ The return label was from {carrier}, tracking {tracking}.
+ The courier confirmed delivery to your warehouse.
[technical.error_code w=6]
S: Error {error} | Getting an error | Error message when I log in | {error} again | Problem with {app}
I keep getting the error "{error}" when I open {app}. It started on {date}.
Since the last update {app} shows "{error}" every time I try to save my settings.
When I try to add my {product} I get "{error}" and nothing happens.
Every few minutes the dashboard throws "{error}". Is there an outage?
~ getting {error} again | {error} in {app}??
+ I already restarted the router and reinstalled the app. | I'm on version {version}.
+ A screenshot is attached.
[technical.app_crash w=5]
S: App crashes | App keeps crashing | {app} crashes on startup | crash after update
{app} crashes as soon as I open the live view of my {product}.
After updating to version {version} the app closes immediately on start. I'm on {os}.
The app freezes and then crashes whenever I try to set up an automation.
~ app crashes on startup since update | app keeps closing
+ Reinstalling did not help. | My phone runs {os}.
[technical.login_failure w=4 alt=account:0.16]
S: Can't log in | Login not working | Login problem | cannot sign in
I can't log in to the web dashboard. The page reloads and asks for my password again.
Login fails with "{error}" even though my password is correct. I reset it twice.
Since this morning I can't sign in on {app}, it just spins forever.
~ cant login, password is right | login broken?
+ Logging in worked fine yesterday.
[technical.sync w=4 alt=general:0.05]
S: Sync not working | Data not syncing | devices out of sync | Sync error
My {product} is not syncing with the app anymore. The last update shown is from {date}.
Changes I make in {app} don't show up on my other phone. Sync seems stuck.
The energy reports haven't synced for a week. The device is online, so I don't understand what's wrong.
~ sync stuck since {date}
+ Both phones are on the same account.
[technical.api_error w=3]
S: API error | Webhook failures | API returning {error} | Integration broken
Our integration calls to your API started failing with "{error}" on {date}. Nothing changed on our side.
The webhooks for device events stopped arriving. The API logs show "{error}".
Is there a rate limit on the API? We get "{error}" after about 100 requests.
~ API returning {error} since {date}
+ We use the REST API from our backend, not the app.
[technical.slow_dashboard w=3]
S: Dashboard very slow | Slow loading | performance problem | Website slow
The dashboard takes more than a minute to load the device list. It was fast last week.
{app} is extremely slow today, every page takes ages and sometimes times out with "{error}".
Energy reports take forever to load since the update.
~ dashboard super slow today
+ Our internet connection is fine, other sites load quickly.
[technical.device_offline w=4]
S: Device offline | {product} offline | {product} not connecting | Can't connect device
My {product} shows as offline in the app although it has power and Wi-Fi.
I can't connect my new {product} to the Wi-Fi. Pairing fails at the last step with "{error}".
Since the firmware update my {product} keeps dropping offline every few hours.
~ {product} offline again
+ I already reset the device to factory settings.
[technical.billing_page_error w=2 mix=billing alt=billing:0.16]
S: Error on billing page | Can't update card, page error | billing page broken | Invoice download error
The billing page shows "{error}" when I try to update my card, so I can't pay the invoice.
I get an error when I try to download invoice {invoice}. The button just spins and then shows "{error}".
The payment form crashes after I enter my card details. I'd like to pay but the page won't let me.
~ billing page error {error}
[technical.passkey w=0 dw=5 alt=account:0.16]
S: Passkey login not working | Passkey problem | can't sign in with passkey | Error {error}
Since you switched to passkeys I can't log in anymore. {app} says "{error}".
I set up a passkey on my phone but the web dashboard doesn't accept it and shows "{error}".
The new passkey login fails on my second device. How do I get back in?
~ passkey login broken
+ Password login is no longer offered as an option.
[technical.autopilot_bug w=0 dw=5]
S: Autopilot mode bug | Autopilot not working | problem with autopilot | {product} autopilot | Autopilot??
The new Autopilot mode turns my heating on at night although the schedule says off. My energy bill doubled.
Autopilot keeps switching my {product} on and off every few minutes since the update.
Since Autopilot was enabled by default my automations don't run anymore, and I pay for energy I don't use.
Autopilot cancelled all my schedules after the last update. How do I get them back?
~ autopilot mode is broken | how do I cancel autopilot, it keeps turning things on
+ I'd like to turn Autopilot off completely. | Nobody asked me before switching it on.
[account.change_email w=5]
S: Change email address | New email | update login email | Email change
I'd like to change the email address on my account from my old work address to my personal one.
How can I change my login email? I no longer have access to the old mailbox.
Please update the email on account {account} to this address.
~ change my email pls | need to update my login email
+ I can confirm my identity with my last order number, {order}.
[account.reset_2fa w=4]
S: 2FA reset | Lost my phone, can't do two-factor | Two-factor authentication | Locked out 2FA
I lost my phone and can't receive the two-factor codes anymore. Can you reset 2FA on my account?
My new phone doesn't have the authenticator app anymore. Please disable two-factor so I can set it up again.
The SMS codes for two-factor never arrive. I'm locked out of my account.
~ new phone, need 2fa reset
+ I still know my password.
[account.gdpr_export w=3]
S: Data request | GDPR data export | Request for my personal data | Subject access request
Under the GDPR I request a copy of all personal data you hold about me.
Please send me an export of my account data, including device history and recordings.
I'd like to know what personal data you store about me and who you share it with.
~ pls send me all my data (gdpr)
+ Please confirm when you received this request.
[account.add_member w=3 alt=sales:0.07]
S: Add team member | Adding users to our account | Invite not working | shared access
How do I add a colleague to our account? The invite button is greyed out.
We'd like to give two new team members access to our account with admin rights.
I invited my partner to the home but the invitation never arrived.
~ how to add another user
+ We are on the {plan} plan.
[account.profile_update w=3]
S: Update account details | Change of company name | Update address | Wrong name on account
Our company changed its name to {company}. Please update the account details.
The name on my account is misspelled. I can't find a way to change it myself.
Please change the account owner to my colleague, I am leaving the company.
~ update name on my account
+ The account number is {account}.
[account.locked_out w=3 alt=technical:0.16]
S: Account locked | Can't access my account | account suspended? | Locked out
My account says it is locked after too many attempts. How long until I can try again?
I can't access my account anymore, it says the account is suspended. What happened?
I never got the password reset email, so I can't get into my account.
~ account locked, help
+ I checked the spam folder.
[account.passkey_reset w=0 dw=3 alt=technical:0.14]
S: Lost my passkey | Passkey reset | New phone, passkey gone | remove old passkey
I lost the phone with my passkey on it. How do I get back into my account?
Please remove the old passkey from my account, I replaced my laptop.
~ lost passkey, need access
+ I can verify with my order number {order}.
[account.delete_data w=2 alt=cancellation:0.11]
S: Delete my data | Remove my personal information | Erase my recordings
Please delete all recordings and personal data linked to my account, but keep the account itself.
I'd like my old address and phone number removed from your systems.
~ delete my recordings pls
[shipping.where_is_parcel w=6]
S: Where is my order? | Order {order} not arrived | Tracking not updating | where is my parcel?
I ordered a {product} on {date} (order {order}) and it still hasn't arrived. Tracking hasn't moved in days.
Can you tell me where my parcel is? The {carrier} tracking number {tracking} shows no update since {date}.
My order {order} was supposed to arrive last week. When will it be delivered?
~ where is my order {order} | tracking {tracking} not moving
+ I need it before the weekend. | The tracking page just says "label created".
[shipping.wrong_address w=3]
S: Wrong delivery address | Change shipping address | Address mistake | Wrong address on order {order}
I entered the wrong delivery address for order {order}. Can you change it before it ships?
We moved last week. Please send order {order} to the new address instead.
The {carrier} driver says the address is incomplete. The apartment number is missing.
~ wrong address on {order}, pls change
+ The correct postcode is in my signature.
[shipping.damaged w=3 alt=billing:0.07]
S: Damaged item | Package arrived damaged | Broken on arrival | Damaged {product}
My {product} arrived with a cracked case. The box was crushed. Order {order}.
The parcel was damaged and the {product} inside doesn't turn on. What should I do?
Order {order} arrived but the item is broken. I'd like a replacement, not a refund.
~ {product} arrived broken
+ I took photos of the box and the device.
[shipping.customs w=2]
S: Customs fees | Parcel stuck in customs | Import duty | customs charge
My parcel is stuck in customs in {country}. {carrier} wants import duty of {amount}. Wasn't that included?
Do I have to pay customs fees when ordering to {country}?
The courier wants customs papers for order {order}. Can you send them?
~ why do i have to pay customs
+ The shop said shipping to {country} is duty-free.
[shipping.missing_item w=3 alt=billing:0.07]
S: Item missing from order | Incomplete delivery | Missing part | Parcel marked delivered but not received
The package for order {order} arrived but the {product} was missing. Only the cables were inside.
Tracking says delivered on {date} but I never got the parcel. Neighbours don't have it either.
I ordered two {product} and only one arrived.
~ parcel says delivered but isn't here
+ The tracking number is {tracking}.
[shipping.preorder w=0 dw=4]
S: Pre-order status | When does the Nimbus Hub ship? | Preorder {order} | pre-order still processing
I pre-ordered the Nimbus Hub on {date} (order {order}). My account still says processing. When will it ship?
When does the Quasar Cam pre-order ship? I was promised delivery this month.
I paid {amount} upfront for the Nimbus Hub pre-order. If it doesn't arrive this month I'd rather cancel.
~ when does my nimbus preorder ship | quasar cam preorder - still charged, nothing shipped
+ I paid {amount} upfront. | My account page shows no delivery date.
[shipping.delivery_failed w=2]
S: Failed delivery | Missed delivery | Redelivery | Parcel returned to sender
{carrier} tried to deliver while I was at work and now the parcel is going back. Can you resend it?
The delivery failed twice. Can I pick the order up somewhere instead?
~ missed delivery, can you resend {order}
+ I'm home after 6pm on weekdays.
[cancellation.cancel_subscription w=5]
S: Cancel subscription | Cancellation | Please cancel | Cancel my {plan} plan | cancel
Please cancel my {plan} subscription at the end of the current billing period.
I'd like to cancel my subscription. I don't use the cloud recording anymore.
How do I cancel? I can't find the option anywhere in the app.
Cancel my plan effective immediately and confirm by email please.
~ cancel my subscription | pls cancel, thx | CANCEL
+ Please make sure I won't be charged again. | We're switching to another provider.
[cancellation.cancel_order w=4 alt=shipping:0.09]
S: Cancel order {order} | Cancel my order | Order cancellation | Cancel before shipping
Please cancel order {order}, I ordered the wrong {product}.
I placed order {order} by mistake. Can you cancel it before it ships?
I want to cancel my order, it hasn't shipped yet and I found it cheaper elsewhere.
~ cancel order {order}
+ If it already shipped I'll refuse the delivery.
[cancellation.close_account w=3 alt=account:0.14]
S: Close my account | Delete my account | Account closure | Remove account
Please close my account and delete all my data. I no longer use any of your devices.
I want to delete my account completely. How do I do that?
We are closing our company account at the end of the month. What happens to our data?
~ delete my account
+ I have already unpaired all devices.
[cancellation.downgrade w=3 alt=sales:0.14]
S: Downgrade plan | Switch to cheaper plan | Downgrade to {plan} | reduce subscription
I want to downgrade to the {plan} plan at the next renewal.
We don't need all the seats anymore. Can we downgrade to a smaller plan instead of cancelling?
~ downgrade to {plan} pls
+ We'll keep the account, just fewer features.
[cancellation.stop_renewal w=2]
S: Stop auto-renewal | Turn off auto renew | Don't renew my plan
Please turn off auto-renewal on my annual plan. I'll decide later whether to renew.
My plan renews on {date} and I don't want it to. Please stop the renewal.
~ turn off auto renew
[cancellation.cancel_double_charge w=2 mix=billing]
S: Cancelling after double charge | Cancel - charged twice | cancel and refund
You charged me twice again ({amount}), so I want to cancel my subscription. Refund the extra charge please.
After the double charge on {date} I've had enough. Please cancel my plan and refund the duplicate payment.
~ charged twice, cancel everything
[cancellation.cancel_because_bugs w=2 mix=technical]
S: Cancelling - app doesn't work | cancel, nothing works | Cancellation request
{app} has been crashing for weeks and nobody fixes it. Please cancel my subscription.
My {product} goes offline every day. I'm done, cancel my plan and tell me how to return the device.
~ app broken for weeks, cancel
[cancellation.cancel_price w=0 dw=4 mix=billing]
S: Cancelling because of the new price | Price increase - cancel | cancel before new price
With the new {plan} price of {amount} it's not worth it for me. Please cancel before the next renewal.
The price went up again, so cancel my subscription please.
~ too expensive now, cancel
[sales.quote_seats w=4]
S: Quote request | Quote for {seats} seats | Pricing for {seats} users | Request for quotation
We're looking at your {plan} plan for about {seats} users. Could you send us a quote?
Could you prepare a quotation for {seats} devices and licences for our offices?
What would {seats} seats cost on an annual contract?
~ quote for {seats} seats?
+ We'd need it before the end of the quarter. | Our procurement needs a formal offer with payment terms.
[sales.enterprise w=3]
S: Enterprise plan | Enterprise pricing | SSO and enterprise features | Business account
Do you offer an enterprise plan with SSO and a dedicated account manager?
We manage {seats} properties and are interested in an enterprise agreement. Who can we talk to?
What does the enterprise tier include compared to Business?
~ enterprise pricing?
+ We're currently evaluating two other vendors.
[sales.discount w=2 alt=billing:0.09]
S: Discount for nonprofits | Education discount | Volume discount | Any discounts?
Do you offer a discount for nonprofit organisations or schools?
If we buy {seats} {product}, is there a volume discount?
~ any discount for students?
[sales.partnership w=2]
S: Partnership | Reseller enquiry | Partnership proposal | Collaboration
We install smart home systems and would like to become a reseller of your devices in {country}.
I'm reaching out from {company} about a possible integration partnership.
~ interested in reselling your products
+ Happy to set up a call next week.
[sales.demo w=2]
S: Demo request | Can we get a demo? | Product demo | Trial for our team
Could we book a demo of the business dashboard for our facilities team?
We'd like a trial of the {plan} plan for {seats} users before we commit.
~ can we get a demo
+ Any day next week works for us.
[sales.autopilot_addon w=0 dw=3 alt=billing:0.07]
S: Autopilot add-on pricing | Autopilot for our properties | add-on price
We manage {seats} homes. Can we add Autopilot to all of them, and what does the add-on cost per device?
Is Autopilot included in the {plan} plan or is it a paid add-on?
~ autopilot add-on price?
+ We'd roll it out next quarter.
[sales.upgrade_question w=2 alt=billing:0.14]
S: Upgrade to {plan} | Upgrade question | Which plan do I need?
I'm thinking about upgrading to {plan}. What extra features would I get?
What's the difference between Plus and Premium? I want cloud recording for 3 cameras.
~ whats included in {plan}
+ I'd like to upgrade this month if the price is right.
[general.feedback w=4 alt=technical:0.09]
S: Feedback | Some feedback | Suggestion | Idea for the app
Just some feedback: it would be great if the app had a dark mode.
I love the {product} but the setup instructions could be clearer.
A suggestion: let us export the energy reports as CSV.
~ please add dark mode
+ Otherwise I'm very happy.
[general.compliment w=2]
S: Thank you! | Great support | Thanks to your team | Compliment
I just wanted to say thank you to the agent who helped me yesterday. Really great service.
Your product is fantastic, the {product} has made our home so much easier.
~ thanks, great service!
[general.complaint_vague w=3 alt=cancellation:0.05]
S: Complaint | Very disappointed | Not happy | Terrible experience
I am very disappointed with your service. Nothing works the way it was advertised.
This is the third time I'm writing and nobody answers. Very bad experience overall.
I'm not happy at all with how I've been treated. Please have someone call me.
~ very disappointed
+ I expected a lot more from your company.
[general.press w=1]
S: Press enquiry | Interview request | Media request
I'm a journalist at a tech magazine writing about smart home security. Could I talk to someone from your team?
Do you have a press kit and product images we could use in a review?
[general.job_application w=1]
S: Job application | Application for the support role | Internship | Open positions
I'd like to apply for the customer support position. Please find my CV attached.
Do you have any open positions for developers in {country}?
[general.other w=3]
S: Question | Quick question | Info | Hello | (no subject)
Do you have a physical store where I can see the devices?
Is the {product} compatible with my existing alarm system?
Where are your devices manufactured?
Do you still sell the old {product}? My neighbour wants the same one.
~ do you have a store in {country}
+ Thanks for any info.
"""
